//! Bulwark's own services on the client port: `bulwarkpb.Admin` (join tokens: show, rotate;
//! client identities: issue, list, revoke; the CA: status, update, rotate; see
//! [`crate::identities`]), which only the admin identity may call, and `bulwarkpb.Identity`
//! (renewing one's own certificate, the roots to trust), which any client identity may call for
//! itself.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::ApiContext;
use crate::identities::{self, rotation};
use crate::mvcc::CommandResponse;
use crate::pki::{self, JoinToken, Role};
use crate::proto::bulwarkpb::admin_server::Admin;
use crate::proto::bulwarkpb::identity_server::Identity;
use crate::proto::bulwarkpb::{
    command, CaRoot, CaRotationStatus, CaStatusRequest, CaStatusResponse, IdentityInfo,
    IssueIdentityRequest, ListIdentitiesRequest, ListIdentitiesResponse, LoginResponse,
    RenewRequest, RevokeIdentityRequest, RevokeIdentityResponse, RotateCaRequest, RotateCaResponse,
    ShowTokenRequest, ShowTokenResponse, TrustRequest, TrustResponse, UpdateCaRequest,
    UpdateCaResponse,
};

/// The admin identity's common name (etcd's `root` user).
pub const ADMIN_NAME: &str = "root";

pub struct AdminService(pub(super) Arc<ApiContext>);

/// The caller's identity, if it is the admin client identity; refuses everyone else.
fn require_admin<T>(request: &Request<T>) -> Result<pki::PeerIdentity, Status> {
    let denied = || Status::permission_denied("etcdserver: permission denied");
    let certs = request.peer_certs().ok_or_else(denied)?;
    let leaf = certs.first().ok_or_else(denied)?;
    let identity = pki::identity_of(leaf.as_ref()).map_err(|_| denied())?;
    if identity.role == Role::Client && identity.common_name == ADMIN_NAME {
        Ok(identity)
    } else {
        Err(denied())
    }
}

fn token_setting(role: &str) -> Result<String, Status> {
    identities::token_setting(role).ok_or_else(|| {
        Status::invalid_argument(format!(
            "unknown role {role:?}: expected \"manager\" or \"client\""
        ))
    })
}

impl AdminService {
    async fn propose_setting(&self, command: command::Kind) -> Result<(), Status> {
        match self.0.propose(command).await? {
            CommandResponse::SettingStored => Ok(()),
            other => Err(Status::internal(format!("write path answered {other:?}"))),
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn show_token(
        &self,
        request: Request<ShowTokenRequest>,
    ) -> Result<Response<ShowTokenResponse>, Status> {
        require_admin(&request)?;
        let setting = token_setting(&request.get_ref().role)?;
        self.0.read_barrier().await?;
        let token = identities::join_token(&self.0.store, &setting)
            .map_err(ApiError::from)?
            .ok_or_else(|| Status::unavailable("the cluster has no join token yet"))?
            .to_string();
        Ok(Response::new(ShowTokenResponse { token }))
    }

    async fn rotate_token(
        &self,
        request: Request<ShowTokenRequest>,
    ) -> Result<Response<ShowTokenResponse>, Status> {
        require_admin(&request)?;
        let role = &request.get_ref().role;
        let setting = token_setting(role)?;
        self.0.read_barrier().await?;
        // During a CA rotation tokens still pin the old root (see `rotation`).
        let pinned = match rotation::current(&self.0.store).map_err(ApiError::from)? {
            Some(rotation) => rotation.token_root().to_string(),
            None => self.0.ca.issuer().cert_pem().to_string(),
        };
        let token = JoinToken::generate(&pinned)
            .map_err(|e| Status::internal(e.to_string()))?
            .to_string();
        self.propose_setting(identities::set_setting(setting, token.clone().into_bytes()))
            .await?;
        tracing::info!(%role, "join token rotated");
        Ok(Response::new(ShowTokenResponse { token }))
    }

    async fn issue_identity(
        &self,
        request: Request<IssueIdentityRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        require_admin(&request)?;
        let request = request.into_inner();
        let ttl = match request.ttl_seconds {
            0 => identities::CLIENT_CERT_TTL,
            seconds => Duration::from_secs(seconds),
        };
        issue_identity(&self.0, &request.name, &request.csr_pem, ttl).await
    }

    async fn list_identities(
        &self,
        request: Request<ListIdentitiesRequest>,
    ) -> Result<Response<ListIdentitiesResponse>, Status> {
        require_admin(&request)?;
        self.0.read_barrier().await?;
        let identities = identities::list(&self.0.store)
            .map_err(ApiError::from)?
            .into_iter()
            .map(|(issued, state)| identity_info(issued, state))
            .collect();
        Ok(Response::new(ListIdentitiesResponse { identities }))
    }

    async fn revoke_identity(
        &self,
        request: Request<RevokeIdentityRequest>,
    ) -> Result<Response<RevokeIdentityResponse>, Status> {
        let caller = require_admin(&request)?;
        let name = &request.get_ref().name;
        self.0.read_barrier().await?;
        let certificates: Vec<_> = identities::list(&self.0.store)
            .map_err(ApiError::from)?
            .into_iter()
            .filter(|(issued, _)| &issued.name == name)
            .collect();
        if certificates.is_empty() {
            return Err(Status::not_found(format!("no identity named {name:?}")));
        }
        if certificates
            .iter()
            .any(|(issued, _)| issued.role == "member")
        {
            return Err(Status::failed_precondition(format!(
                "{name:?} is a member: remove it with `etcdctl member remove` (that revokes its \
                 certificate too)"
            )));
        }
        if certificates
            .iter()
            .any(|(issued, _)| issued.serial == caller.serial_hex)
        {
            return Err(Status::failed_precondition(
                "refusing to revoke the identity this request was made with",
            ));
        }
        let mut serials = Vec::new();
        for (issued, state) in certificates {
            if state == identities::CertificateState::Revoked {
                continue;
            }
            self.propose_setting(identities::deny(
                &issued.serial,
                &format!("identity {name} revoked"),
                issued.not_after,
            ))
            .await?;
            serials.push(issued.serial);
        }
        tracing::info!(%name, ?serials, "identity revoked");
        Ok(Response::new(RevokeIdentityResponse { serials }))
    }

    async fn update_ca(
        &self,
        request: Request<UpdateCaRequest>,
    ) -> Result<Response<UpdateCaResponse>, Status> {
        require_admin(&request)?;
        let ttl = Duration::from_secs(request.get_ref().member_cert_ttl_seconds);
        if ttl < identities::MIN_MEMBER_CERT_TTL || ttl > identities::DEFAULT_MEMBER_CERT_TTL * 4 {
            return Err(Status::invalid_argument(format!(
                "a member certificate lifetime must be between {}s and {}s",
                identities::MIN_MEMBER_CERT_TTL.as_secs(),
                (identities::DEFAULT_MEMBER_CERT_TTL * 4).as_secs()
            )));
        }
        self.propose_setting(identities::set_member_cert_ttl(ttl))
            .await?;
        tracing::info!(?ttl, "member certificate lifetime changed");
        Ok(Response::new(UpdateCaResponse {
            member_cert_ttl_seconds: ttl.as_secs(),
        }))
    }

    async fn ca_status(
        &self,
        request: Request<CaStatusRequest>,
    ) -> Result<Response<CaStatusResponse>, Status> {
        require_admin(&request)?;
        self.0.read_barrier().await?;
        let internal = |e: pki::PkiError| Status::internal(e.to_string());
        let store = &self.0.store;
        // From the replicated record, not this member's files: every member answers the same,
        // also in the seconds before it has taken a change into use itself.
        let rotation = rotation::current(store).map_err(ApiError::from)?;
        let roots = match &rotation {
            Some(rotation) => vec![
                (rotation.new_root_pem.clone(), "issuing"),
                (
                    rotation.old_root_pem.clone(),
                    if rotation.is_rotating() {
                        "trusted"
                    } else {
                        "retired"
                    },
                ),
            ],
            None => vec![(self.0.ca.issuer().cert_pem().to_string(), "issuing")],
        }
        .into_iter()
        .map(|(pem, state)| root_info(&pki::first_cert_der(&pem).map_err(internal)?, state))
        .collect::<Result<Vec<_>, Status>>()?;
        let listed = identities::list(store).map_err(ApiError::from)?;
        let members = self
            .0
            .consensus
            .status()
            .members
            .into_iter()
            .filter_map(|(id, node, _)| {
                rotation::newest_member_certificate(&listed, id, &node.cert_serial)
            })
            .map(|(issued, state)| identity_info(issued.clone(), *state))
            .collect();
        // Each client identity's newest valid certificate.
        let mut newest = std::collections::BTreeMap::<&str, &identities::IssuedCertificate>::new();
        for (issued, state) in &listed {
            if issued.role == "client" && *state == identities::CertificateState::Valid {
                let entry = newest.entry(issued.name.as_str()).or_insert(issued);
                if (issued.issued_at, issued.not_after) > (entry.issued_at, entry.not_after) {
                    *entry = issued;
                }
            }
        }
        let identities: Vec<IdentityInfo> = newest
            .values()
            .map(|issued| identity_info((*issued).clone(), identities::CertificateState::Valid))
            .collect();
        let rotation = match rotation {
            Some(rotation) => {
                let (members_on_old_root, identities_on_old_root) = if rotation.is_rotating() {
                    (
                        rotation::members_not_on(store, &self.0.consensus, &rotation.new_root_name)
                            .map_err(ApiError::from)?,
                        identities
                            .iter()
                            .filter(|identity| identity.issuer != rotation.new_root_name)
                            .map(|identity| identity.name.clone())
                            .collect(),
                    )
                } else {
                    (Vec::new(), Vec::new())
                };
                Some(CaRotationStatus {
                    generation: rotation.generation,
                    old_root: rotation.old_root_name,
                    new_root: rotation.new_root_name,
                    started_at: rotation.started_at,
                    retired_at: rotation.retired_at,
                    grace_seconds: rotation.grace_seconds,
                    members_on_old_root,
                    identities_on_old_root,
                })
            }
            None => None,
        };
        let ttl = identities::member_cert_ttl(store).map_err(ApiError::from)?;
        Ok(Response::new(CaStatusResponse {
            roots,
            member_cert_ttl_seconds: ttl.as_secs(),
            members,
            rotation,
            identities,
        }))
    }

    async fn rotate_ca(
        &self,
        request: Request<RotateCaRequest>,
    ) -> Result<Response<RotateCaResponse>, Status> {
        require_admin(&request)?;
        let grace = request
            .get_ref()
            .grace_seconds
            .map_or(rotation::DEFAULT_GRACE, Duration::from_secs);
        self.0.read_barrier().await?;
        let previous = rotation::current(&self.0.store).map_err(ApiError::from)?;
        let issuer = self.0.ca.issuer();
        let started = rotation::CaRotation::start(&issuer, previous.as_ref(), grace).map_err(
            |e| match e {
                rotation::RotationError::InProgress(_) | rotation::RotationError::NotCurrent => {
                    Status::failed_precondition(e.to_string())
                }
                other => Status::internal(other.to_string()),
            },
        )?;
        // Compare-and-set: a rotation started elsewhere meanwhile makes this one fail.
        self.propose_setting(started.replacing(previous.as_ref()))
            .await
            .map_err(|status| {
                if status.code() == tonic::Code::FailedPrecondition {
                    Status::failed_precondition(
                        "the CA changed while this rotation was being prepared (another `ca \
                         rotate`?); see `bulwark ca status`",
                    )
                } else {
                    status
                }
            })?;
        tracing::info!(root = %started.new_root_name, grace_seconds = started.grace_seconds, "CA rotation started");
        let der = pki::first_cert_der(&started.new_root_pem)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(RotateCaResponse {
            generation: started.generation,
            new_root: Some(root_info(&der, "issuing")?),
        }))
    }
}

pub struct IdentityService(pub(super) Arc<ApiContext>);

#[tonic::async_trait]
impl Identity for IdentityService {
    /// A client renews itself: same name, same lifetime as the certificate it presents (which
    /// the handshake has verified and checked against the deny list), for a new key.
    async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        let denied = || Status::permission_denied("etcdserver: permission denied");
        let leaf = request
            .peer_certs()
            .and_then(|certs| certs.first().cloned())
            .ok_or_else(denied)?;
        let caller = pki::identity_of(leaf.as_ref()).map_err(|_| denied())?;
        if caller.role != Role::Client {
            return Err(Status::permission_denied(
                "only client identities renew this way (members renew themselves)",
            ));
        }
        let lifetime = caller
            .not_after
            .duration_since(identities::issued_at(&caller))
            .unwrap_or_default();
        // Never longer than a year: a renewal keeps the lifetime it was issued with, within
        // reason.
        let ttl = if lifetime.is_zero() {
            identities::CLIENT_CERT_TTL
        } else {
            lifetime.min(identities::MAX_RENEWED_CLIENT_TTL)
        };
        issue_identity(
            &self.0,
            &caller.common_name,
            &request.get_ref().csr_pem,
            ttl,
        )
        .await
    }

    async fn trust(
        &self,
        request: Request<TrustRequest>,
    ) -> Result<Response<TrustResponse>, Status> {
        // Any verified client may ask; the handshake has checked its certificate.
        request
            .peer_certs()
            .filter(|certs| !certs.is_empty())
            .ok_or_else(|| Status::permission_denied("etcdserver: permission denied"))?;
        // The issuing root as the replicated record names it, so a client never renews back to
        // a root this member has not moved away from yet.
        let issuer = match rotation::issuing_root_name(&self.0.store).map_err(ApiError::from)? {
            Some(name) => name,
            None => self.0.ca.issuer().common_name().to_string(),
        };
        Ok(Response::new(TrustResponse {
            ca_cert_pem: self.0.ca.roots_pem(),
            issuer,
        }))
    }
}

/// Signs a client identity named `name` for `csr_pem` with the issuing CA, records it, and
/// answers with what its holder needs: the certificate, the roots to trust, the members' URLs.
async fn issue_identity(
    context: &ApiContext,
    name: &str,
    csr_pem: &str,
    ttl: Duration,
) -> Result<Response<LoginResponse>, Status> {
    let issuer = rotation::issuer(&context.store, &context.ca).map_err(rotation_status)?;
    let client_cert_pem =
        identities::issue_client(&context.consensus, &issuer, name, csr_pem, ttl).await?;
    Ok(Response::new(LoginResponse {
        client_cert_pem,
        ca_cert_pem: context.ca.roots_pem(),
        client_urls: context.consensus.client_urls(),
    }))
}

fn identity_info(
    issued: identities::IssuedCertificate,
    state: identities::CertificateState,
) -> IdentityInfo {
    IdentityInfo {
        name: issued.name,
        role: issued.role,
        serial: issued.serial,
        not_after: issued.not_after,
        issued_at: issued.issued_at,
        state: state.as_str().to_string(),
        issuer: issued.issuer,
    }
}

/// A rotation error as a gRPC status: a member still moving answers Unavailable (retry, or ask
/// another member).
pub(crate) fn rotation_status(error: rotation::RotationError) -> Status {
    match error {
        rotation::RotationError::NotCurrent => Status::unavailable(
            "this member is taking a new CA root into use; retry in a few seconds",
        ),
        rotation::RotationError::InProgress(_) => Status::failed_precondition(error.to_string()),
        other => Status::internal(other.to_string()),
    }
}

fn root_info(der: &[u8], state: &str) -> Result<CaRoot, Status> {
    let root = pki::identity_of(der).map_err(|e| Status::internal(e.to_string()))?;
    Ok(CaRoot {
        subject: root.common_name,
        digest: pki::der_digest(der),
        not_after: identities::unix_seconds(root.not_after),
        state: state.to_string(),
    })
}
