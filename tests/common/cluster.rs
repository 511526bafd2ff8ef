//! [`Cluster`]: a temporary directory and the members living in it. A one-member cluster comes
//! from `bulwark init` alone ([`Cluster::single`], [`Cluster::init`]); a multi-member one
//! ([`Cluster::start`]) from `init`, `bulwark token show manager`, then one `bulwark join` at a
//! time, each waited for until it is a voter.
//!
//! The cluster also answers what tests ask of it between steps: each member's `Status` (who
//! leads, at which term and index, learner or not), waits with deadlines (a leader among some
//! members, a member promoted, members converged to the same keys and revision), and it applies
//! faults: kill -9, restart, SIGSTOP/SIGCONT, wiping a member, and, when the cluster is
//! [proxied](ClusterOptions::proxied), network faults between members.
//!
//! Members are killed before the directory is removed; the proxy stops after them.

use std::collections::BTreeSet;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::proxy::{Fault, Network, Node};
use super::{
    free_port, loopback, temp_dir, Etcdctl, Member, MemberOptions, Origin, PeerAddress, TlsFiles,
};

/// Bound on a leader (re-)appearing among members that can form a quorum, and on a member
/// becoming a voter. Generous: a loaded machine with several clusters may take many election
/// rounds.
pub const ELECTION_DEADLINE: Duration = Duration::from_secs(60);
/// Bound on members converging to the same keys and revision.
pub const CONVERGE_DEADLINE: Duration = Duration::from_secs(90);
/// What a join refused because another membership change is in flight prints.
const CONCURRENT_CHANGE_REFUSAL: &str = "already undergoing a configuration change";
/// Poll interval of the status waits (each poll runs etcdctl once per member).
const STATUS_POLL: Duration = Duration::from_millis(100);
/// etcdctl's bounds for a status query: a member that does not answer within them is down (or
/// paused) as far as the waits are concerned.
const STATUS_DIAL_TIMEOUT: Duration = Duration::from_secs(2);
const STATUS_COMMAND_TIMEOUT: Duration = Duration::from_secs(4);

/// What [`Cluster::start`] builds.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub size: usize,
    /// Options of every member (the name is set per member: `m0`, `m1`, ...).
    pub member: MemberOptions,
    /// Whether members reach each other through the fault-injecting proxy.
    pub proxied: bool,
}

impl ClusterOptions {
    /// `size` members with short Raft timings, talking to each other directly.
    pub fn new(size: usize) -> ClusterOptions {
        ClusterOptions {
            size,
            member: MemberOptions::default().fast_raft(),
            proxied: false,
        }
    }
    /// Raft heartbeat interval and election timeout (ms) for every member, instead of the fast
    /// ones.
    pub fn raft_timings(mut self, heartbeat_ms: u64, election_timeout_ms: u64) -> ClusterOptions {
        self.member = self.member.raft_timings(heartbeat_ms, election_timeout_ms);
        self
    }
    /// `--snapshot-count` for every member.
    pub fn snapshot_count(mut self, entries: u64) -> ClusterOptions {
        self.member = self.member.snapshot_count(entries);
        self
    }
    /// Every member advertises a proxy address (`--advertise-peer`), so that the test can cut,
    /// hold or slow the traffic between any two members.
    pub fn proxied(mut self) -> ClusterOptions {
        self.proxied = true;
        self
    }
}

/// One member's answer to `Status` (`etcdctl endpoint status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub id: u64,
    /// 0 when it knows no leader.
    pub leader: u64,
    pub term: u64,
    pub raft_index: u64,
    pub applied_index: u64,
    pub is_learner: bool,
    pub revision: i64,
}

impl MemberStatus {
    fn from_json(status: &Value) -> Option<MemberStatus> {
        let number = |path: &[&str]| {
            let mut at = status;
            for step in path {
                at = &at[*step];
            }
            at.as_u64()
        };
        Some(MemberStatus {
            id: number(&["header", "member_id"])?,
            leader: number(&["leader"]).unwrap_or(0),
            term: number(&["raftTerm"]).unwrap_or(0),
            raft_index: number(&["raftIndex"]).unwrap_or(0),
            applied_index: number(&["raftAppliedIndex"]).unwrap_or(0),
            is_learner: status["isLearner"].as_bool().unwrap_or(false),
            revision: status["header"]["revision"].as_i64().unwrap_or(0),
        })
    }
}

/// A peer address set aside for a member that does not exist yet (for `etcdctl member add`
/// before `bulwark join`): the address it will advertise.
#[derive(Debug, Clone, Copy)]
pub struct Reservation {
    pub advertised: SocketAddr,
    peer: PeerAddress,
    node: Option<Node>,
}

impl Reservation {
    /// The proxy node that will be in front of the member (proxied clusters).
    pub fn node(&self) -> Option<Node> {
        self.node
    }
}

/// A temporary directory and the members living in it (`DIR/m0`, `DIR/m1`, ...).
pub struct Cluster {
    members: Vec<Member>,
    /// The proxy node in front of each member (proxied clusters only).
    nodes: Vec<Option<Node>>,
    network: Option<Arc<Network>>,
    /// Options of members made by joins and restarts.
    options: MemberOptions,
    /// The cluster's admin identity, copied out of the first member's directory so that it
    /// outlives any member.
    admin: TlsFiles,
    token: Option<String>,
    dir: Option<tempfile::TempDir>,
}

impl Cluster {
    /// A new one-member cluster (`bulwark init`), serving.
    pub fn init(options: MemberOptions) -> Cluster {
        let dir = temp_dir();
        let name = options.name.clone().unwrap_or_else(|| "m0".to_string());
        let member = Member::init(&dir.path().join(&name), options.clone());
        Cluster {
            admin: member.admin(),
            members: vec![member],
            nodes: vec![None],
            network: None,
            options,
            token: None,
            dir: Some(dir),
        }
    }

    /// A one-member cluster with default options.
    pub fn single() -> Cluster {
        Cluster::init(MemberOptions::default())
    }

    /// `options.size` members: `m0` by `init`, the others by `join` with the manager token,
    /// one at a time, each a voter before the next joins; returns once they agree on a leader.
    pub fn start(options: ClusterOptions) -> Cluster {
        assert!(options.size >= 1, "a cluster has at least one member");
        let dir = temp_dir();
        let mut cluster = Cluster {
            members: Vec::new(),
            nodes: Vec::new(),
            network: options.proxied.then(|| Arc::new(Network::start())),
            options: options.member.clone(),
            admin: TlsFiles::admin_of(dir.path()),
            token: None,
            dir: Some(dir),
        };
        let reservation = cluster.reserve_peer_address();
        let first = Member::create(
            &cluster.dir().join("m0"),
            cluster.options.clone().name("m0"),
            &Origin::Init,
            reservation.peer,
        );
        cluster.admin = copy_identity(&first.admin(), cluster.dir());
        cluster.add(first, reservation.node);
        cluster.token = Some(cluster.fetch_token(0));
        for index in 1..options.size {
            cluster.join(&format!("m{index}"));
        }
        let all: Vec<usize> = (0..options.size).collect();
        cluster.wait_leader(&all);
        cluster
    }

    // -----------------------------------------------------------------------------------------
    // Members

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("cluster directory").path()
    }
    pub fn len(&self) -> usize {
        self.members.len()
    }
    pub fn member(&self, index: usize) -> &Member {
        &self.members[index]
    }
    pub fn member_mut(&mut self, index: usize) -> &mut Member {
        &mut self.members[index]
    }
    pub fn members(&self) -> &[Member] {
        &self.members
    }
    /// Every member's client URL, comma-separated (etcdctl's `--endpoints`).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(Member::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }
    /// The cluster's admin identity (valid on every member).
    pub fn admin(&self) -> TlsFiles {
        self.admin.clone()
    }
    /// etcdctl against every member, with the admin identity.
    pub fn etcdctl(&self) -> Etcdctl {
        Etcdctl::new(&self.endpoints()).tls(&self.admin)
    }
    /// The manager join token (`bulwark token show manager`, read when the cluster started).
    pub fn token(&self) -> String {
        self.token
            .clone()
            .expect("a cluster made by Cluster::start")
    }
    /// Every member's current process id: unchanged across a step means no member restarted.
    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .map(|member| {
                member
                    .pid_handle()
                    .load(std::sync::atomic::Ordering::SeqCst)
            })
            .collect()
    }

    /// The member id of member `index`, as it printed it.
    pub fn id(&self, index: usize) -> u64 {
        self.members[index]
            .id()
            .unwrap_or_else(|| panic!("member {index} has not printed its id"))
    }
    /// The index of the member with id `id`.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        (0..self.members.len()).find(|index| self.members[*index].id() == Some(id))
    }
    /// Indexes of the members with a process (running, or paused).
    pub fn running(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|index| self.members[*index].has_process())
            .collect()
    }

    /// Sets aside the peer address of a member to come: a proxy node in a proxied cluster, else
    /// a free port it will listen on.
    pub fn reserve_peer_address(&self) -> Reservation {
        match &self.network {
            Some(network) => {
                let (node, addr) = network.add_node();
                Reservation {
                    advertised: addr,
                    peer: PeerAddress {
                        listen: None,
                        advertise: Some(addr),
                    },
                    node: Some(node),
                }
            }
            None => {
                let addr = loopback(free_port());
                Reservation {
                    advertised: addr,
                    peer: PeerAddress {
                        listen: Some(addr),
                        advertise: None,
                    },
                    node: None,
                }
            }
        }
    }

    /// `bulwark join` a new member named `name` through a running member, and waits until it is
    /// a voter and the leader has applied its promotion (so that the next membership change is
    /// not refused as concurrent). Returns its index.
    pub fn join(&mut self, name: &str) -> usize {
        let reservation = self.reserve_peer_address();
        let index = self.join_reserved(name, reservation);
        self.wait_voter(index);
        self.wait_membership_settled(index);
        index
    }

    /// `bulwark join` a new member named `name` once, without retrying a refusal and without
    /// waiting for its promotion: `Err` carries what the joiner printed.
    pub fn try_join(&mut self, name: &str) -> Result<usize, String> {
        let reservation = self.reserve_peer_address();
        let origin = self.join_origin();
        let member = Member::try_create(
            &self.dir().join(name),
            self.options.clone().name(name),
            &origin,
            reservation.peer,
        )?;
        Ok(self.add(member, reservation.node))
    }

    /// `bulwark join` a new member advertising `reservation`'s address, and waits until it
    /// serves (not until it is a voter: a member added with `--learner` stays a learner).
    pub fn join_reserved(&mut self, name: &str, reservation: Reservation) -> usize {
        let member = self.spawn_joiner(&self.dir().join(name), name, reservation.peer);
        self.add(member, reservation.node)
    }

    /// Re-makes member `index`, whose directory was wiped ([`Cluster::wipe`]) and which was
    /// removed from the cluster, by `bulwark join` into the same directory under the same name
    /// (and behind the same proxy node); waits until it is a voter.
    pub fn rejoin(&mut self, index: usize) {
        assert!(
            !self.members[index].has_process(),
            "rejoin() of a running member: wipe it first"
        );
        let name = self.members[index].name().to_string();
        let data_dir = self.members[index].data_dir().to_path_buf();
        let node = self.nodes[index];
        let peer = match (node, &self.network) {
            (Some(node), Some(network)) => PeerAddress {
                listen: None,
                advertise: Some(network.addr(node)),
            },
            _ => PeerAddress::default(),
        };
        let member = self.spawn_joiner(&data_dir, &name, peer);
        if let (Some(node), Some(network)) = (node, &self.network) {
            network.set_member(node, member.peer_addr(), member.pid_handle());
        }
        self.members[index] = member;
        self.wait_voter(index);
    }

    /// Joins a member, retrying while the leader refuses because another membership change is
    /// in flight: the server does not wait for it (the bug that
    /// `cluster::a_join_while_the_previous_joiner_is_promoted_gets_in` guards), and cluster
    /// setup must not depend on that race.
    fn spawn_joiner(&self, data_dir: &Path, name: &str, peer: PeerAddress) -> Member {
        let deadline = Instant::now() + ELECTION_DEADLINE;
        loop {
            let origin = self.join_origin();
            match Member::try_create(data_dir, self.options.clone().name(name), &origin, peer) {
                Ok(member) => return member,
                Err(text)
                    if text.contains(CONCURRENT_CHANGE_REFUSAL) && Instant::now() < deadline =>
                {
                    let _ = fs::remove_dir_all(data_dir);
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(text) => panic!("{text}"),
            }
        }
    }

    fn join_origin(&self) -> Origin {
        Origin::Join {
            token: self.token(),
            peer: self.contact_peer(),
            admin: self.admin(),
        }
    }

    fn add(&mut self, member: Member, node: Option<Node>) -> usize {
        if let (Some(node), Some(network)) = (node, &self.network) {
            network.set_member(node, member.peer_addr(), member.pid_handle());
        }
        self.members.push(member);
        self.nodes.push(node);
        self.members.len() - 1
    }

    /// The peer address a joiner should contact: the leader's if known, else any running
    /// member's (it redirects to the leader).
    fn contact_peer(&self) -> SocketAddr {
        let index = self
            .leader()
            .or_else(|| self.running().first().copied())
            .expect("a running member to join through");
        self.members[index].advertised_peer_addr()
    }

    /// Reads the manager token again (after `token rotate manager` or a CA rotation), for the
    /// next joins.
    pub fn refresh_token(&mut self) {
        self.token = Some(self.fetch_token(0));
    }

    fn fetch_token(&self, index: usize) -> String {
        let output = self.members[index].cli(&["token", "show", "manager"]);
        output.assert_success();
        let token = output.stdout.trim().to_string();
        assert!(token.starts_with("BWTKN-1-"), "not a join token:\n{output}");
        token
    }

    // -----------------------------------------------------------------------------------------
    // Status and waits

    /// Member `index`'s `Status`, or `None` if it has no process or does not answer in time.
    pub fn status(&self, index: usize) -> Option<MemberStatus> {
        let member = &self.members[index];
        if !member.has_process() {
            return None;
        }
        let output = Etcdctl::new(&member.endpoint())
            .tls(&self.admin)
            .timeouts(STATUS_DIAL_TIMEOUT, STATUS_COMMAND_TIMEOUT)
            .run(&["endpoint", "status", "-w", "json"]);
        if !output.success() {
            return None;
        }
        let parsed: Value = serde_json::from_str(output.stdout.trim()).ok()?;
        MemberStatus::from_json(&parsed[0]["Status"])
    }

    /// The member that considers itself leader at the highest term, among those answering.
    pub fn leader(&self) -> Option<usize> {
        self.running()
            .into_iter()
            .filter_map(|index| self.status(index).map(|status| (index, status)))
            .filter(|(_, status)| status.leader != 0 && status.leader == status.id)
            .max_by_key(|(_, status)| status.term)
            .map(|(index, _)| index)
    }

    /// Waits until every member in `among` answers and all name the same leader, itself one
    /// of them; returns its index. Panics with their last answers after [`ELECTION_DEADLINE`].
    pub fn wait_leader(&self, among: &[usize]) -> usize {
        let deadline = Instant::now() + ELECTION_DEADLINE;
        loop {
            let statuses: Vec<Option<MemberStatus>> =
                among.iter().map(|index| self.status(*index)).collect();
            if let Some(leader) = agreed_leader(among, &statuses) {
                if let Some(index) = among
                    .iter()
                    .zip(&statuses)
                    .find(|(_, status)| status.as_ref().is_some_and(|s| s.id == leader))
                    .map(|(index, _)| *index)
                {
                    return index;
                }
            }
            assert!(
                Instant::now() < deadline,
                "members {among:?} did not agree on a leader among themselves within \
                 {ELECTION_DEADLINE:?}; last statuses: {statuses:#?}"
            );
            std::thread::sleep(STATUS_POLL);
        }
    }

    /// Every running member but `index`.
    pub fn others(&self, index: usize) -> Vec<usize> {
        self.running()
            .into_iter()
            .filter(|other| *other != index)
            .collect()
    }

    /// `etcdctl member list -w json` as member `via` answers it (its own view of membership).
    pub fn member_list(&self, via: usize) -> Value {
        self.members[via]
            .etcdctl()
            .run(&["member", "list", "-w", "json"])
            .assert_success()
            .json()
    }

    /// Membership as member `via` sees it: (id, name, is learner), sorted by id.
    pub fn membership(&self, via: usize) -> Vec<(u64, String, bool)> {
        let list = self.member_list(via);
        membership_of(&list).unwrap_or_else(|| panic!("no members in {list}"))
    }

    /// Membership as member `via` sees it, or `None` if it does not answer in time.
    pub fn try_membership(&self, via: usize) -> Option<Vec<(u64, String, bool)>> {
        let output = self.members[via]
            .etcdctl()
            .timeouts(STATUS_DIAL_TIMEOUT, STATUS_COMMAND_TIMEOUT)
            .run(&["member", "list", "-w", "json"]);
        if !output.success() {
            return None;
        }
        let list: Value = serde_json::from_str(output.stdout.trim()).ok()?;
        membership_of(&list)
    }

    /// Whether member `via` lists member `id` as a voter.
    fn sees_voter(&self, via: usize, id: u64) -> bool {
        self.try_membership(via).is_some_and(|members| {
            members
                .iter()
                .any(|(member, _, learner)| *member == id && !learner)
        })
    }

    /// Waits until member `index` sees itself as a voter in its own membership.
    pub fn wait_voter(&self, index: usize) {
        let id = self.id(index);
        let deadline = Instant::now() + ELECTION_DEADLINE;
        loop {
            if self.sees_voter(index, id) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "member {index} ({id:x}) is not a voter after {ELECTION_DEADLINE:?}: {:?}",
                self.try_membership(index)
            );
            std::thread::sleep(STATUS_POLL);
        }
    }

    /// Waits until the leader lists member `index` as a voter and has applied every entry it
    /// has (the promotion's joint and final configurations included).
    pub fn wait_membership_settled(&self, index: usize) {
        let id = self.id(index);
        let deadline = Instant::now() + ELECTION_DEADLINE;
        loop {
            let settled = self.leader().is_some_and(|leader| {
                self.sees_voter(leader, id)
                    && self
                        .status(leader)
                        .is_some_and(|status| status.applied_index == status.raft_index)
            });
            if settled {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the promotion of member {index} ({id:x}) did not settle within {ELECTION_DEADLINE:?}"
            );
            std::thread::sleep(STATUS_POLL);
        }
    }

    /// Every key member `index` holds and its revision, read locally (serializable): the
    /// header revision and the `kvs` of `get "" --prefix`.
    pub fn local_state(&self, index: usize) -> Option<(i64, Value)> {
        let output = self.members[index]
            .etcdctl()
            .timeouts(STATUS_DIAL_TIMEOUT, STATUS_COMMAND_TIMEOUT)
            .run(&["get", "", "--prefix", "--consistency=s", "-w", "json"]);
        if !output.success() {
            return None;
        }
        let parsed: Value = serde_json::from_str(output.stdout.trim()).ok()?;
        let revision = parsed["header"]["revision"].as_i64()?;
        Some((revision, parsed["kvs"].clone()))
    }

    /// Waits until every member in `among` holds the same keys, values and revisions at the
    /// same store revision; returns that revision. Panics with their last states after
    /// [`CONVERGE_DEADLINE`].
    pub fn wait_converged(&self, among: &[usize]) -> i64 {
        let deadline = Instant::now() + CONVERGE_DEADLINE;
        loop {
            let states: Vec<Option<(i64, Value)>> =
                among.iter().map(|index| self.local_state(*index)).collect();
            if let Some(Some(first)) = states.first() {
                if states.iter().all(|state| state.as_ref() == Some(first)) {
                    return first.0;
                }
            }
            if Instant::now() >= deadline {
                let summary: Vec<String> = among
                    .iter()
                    .zip(&states)
                    .map(|(index, state)| match state {
                        Some((revision, kvs)) => format!(
                            "member {index}: revision {revision}, {} keys",
                            kvs.as_array().map_or(0, Vec::len)
                        ),
                        None => format!("member {index}: no answer"),
                    })
                    .collect();
                panic!(
                    "members {among:?} did not converge within {CONVERGE_DEADLINE:?}: {summary:#?}"
                );
            }
            std::thread::sleep(STATUS_POLL);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Process faults

    /// SIGKILL member `index`: a crash at an arbitrary moment.
    pub fn kill9(&mut self, index: usize) {
        self.members[index].kill9();
    }
    /// `bulwark serve` member `index` again on its recorded addresses.
    pub fn restart(&mut self, index: usize) {
        self.members[index].restart();
    }
    /// SIGTERM member `index` and wait for its exit.
    pub fn terminate(&mut self, index: usize) -> ExitStatus {
        self.members[index].terminate()
    }
    /// SIGSTOP member `index`: frozen, its sockets open (a stalled machine).
    pub fn pause(&self, index: usize) {
        self.members[index].pause();
    }
    /// SIGCONT member `index` after [`Cluster::pause`].
    pub fn resume(&self, index: usize) {
        self.members[index].resume();
    }
    /// SIGKILL member `index` and delete its data directory (a lost disk).
    pub fn wipe(&mut self, index: usize) {
        self.members[index].kill9();
        let data_dir = self.members[index].data_dir().to_path_buf();
        fs::remove_dir_all(&data_dir)
            .unwrap_or_else(|e| panic!("wiping {}: {e}", data_dir.display()));
    }

    // -----------------------------------------------------------------------------------------
    // Network faults (proxied clusters)

    /// The proxy between members. Panics unless the cluster is proxied.
    pub fn network(&self) -> &Network {
        self.network
            .as_ref()
            .expect("network faults need ClusterOptions::proxied()")
    }

    /// The proxy, shared: for changing faults from another thread while the cluster is busy.
    pub fn network_handle(&self) -> Arc<Network> {
        self.network
            .clone()
            .expect("network faults need ClusterOptions::proxied()")
    }

    /// The proxy node in front of member `index`.
    pub fn node(&self, index: usize) -> Node {
        self.nodes[index].expect("a member behind the proxy")
    }

    /// Sets what happens to the bytes member `from` sends to member `to`.
    pub fn set_link(&self, from: usize, to: usize, fault: Fault) {
        self.network()
            .set_link(self.node(from), self.node(to), fault);
    }

    /// Cuts members `a` and `b` apart, both directions (blackholed).
    pub fn partition(&self, a: usize, b: usize) {
        self.network().partition(self.node(a), self.node(b));
    }

    /// Cuts member `index` off from every other member.
    pub fn isolate(&self, index: usize) {
        for other in (0..self.members.len()).filter(|other| *other != index) {
            self.partition(index, other);
        }
    }

    /// Sets `fault` on both directions between member `index` and every other member.
    pub fn set_links_of(&self, index: usize, fault: Fault) {
        for other in (0..self.members.len()).filter(|other| *other != index) {
            self.set_link(index, other, fault);
            self.set_link(other, index, fault);
        }
    }

    /// Every link passes again.
    pub fn heal(&self) {
        self.network().heal();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.members.clear();
        if let Some(network) = self.network.take() {
            if std::thread::panicking() {
                eprintln!("{}", network.events());
            }
        }
        if std::thread::panicking() && std::env::var_os("BULWARK_TEST_KEEP_DIRS").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("kept the test directory {}", dir.keep().display());
            }
        }
    }
}

/// The leader id every member of `among` names, if they all answered and agree.
fn agreed_leader(among: &[usize], statuses: &[Option<MemberStatus>]) -> Option<u64> {
    let leaders: BTreeSet<u64> = statuses
        .iter()
        .map(|status| status.as_ref().map_or(0, |s| s.leader))
        .collect();
    match leaders.into_iter().collect::<Vec<_>>()[..] {
        [leader] if leader != 0 && !among.is_empty() => Some(leader),
        _ => None,
    }
}

/// (id, name, is learner) of every member in `etcdctl member list -w json`, sorted by id.
fn membership_of(list: &Value) -> Option<Vec<(u64, String, bool)>> {
    let mut members: Vec<(u64, String, bool)> = list["members"]
        .as_array()?
        .iter()
        .map(|member| {
            (
                member["ID"].as_u64().unwrap_or(0),
                member["name"].as_str().unwrap_or("").to_string(),
                member["isLearner"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    members.sort();
    Some(members)
}

/// Copies an admin identity into `DIR/admin/`; returns the copy.
fn copy_identity(files: &TlsFiles, dir: &Path) -> TlsFiles {
    let copy = TlsFiles::admin_of(dir);
    fs::create_dir_all(copy.ca.parent().expect("admin/")).expect("creating the identity directory");
    for (from, to) in [
        (&files.ca, &copy.ca),
        (&files.cert, &copy.cert),
        (&files.key, &copy.key),
    ] {
        fs::copy(from, to)
            .unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
    }
    copy
}
