//! Bulwark's own services on the client port: `bulwarkpb.Admin` (join tokens: show, rotate;
//! client identities: issue, list, revoke; the CA: status, update; see [`crate::identities`]),
//! which only the admin identity may call, and `bulwarkpb.Identity` (renewing one's own
//! certificate), which any client identity may call for itself.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::ApiContext;
use crate::identities;
use crate::mvcc::CommandResponse;
use crate::pki::{self, JoinToken, Role};
use crate::proto::bulwarkpb::admin_server::Admin;
use crate::proto::bulwarkpb::identity_server::Identity;
use crate::proto::bulwarkpb::{
    command, CaRoot, CaStatusRequest, CaStatusResponse, IdentityInfo, IssueIdentityRequest,
    ListIdentitiesRequest, ListIdentitiesResponse, LoginResponse, RenewRequest,
    RevokeIdentityRequest, RevokeIdentityResponse, ShowTokenRequest, ShowTokenResponse,
    UpdateCaRequest, UpdateCaResponse,
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
        self.0
            .consensus
            .read_barrier()
            .await
            .map_err(ApiError::from)?;
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
        let token = JoinToken::generate(self.0.ca.cert_pem())
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
        let cert_pem = identities::issue_client(
            &self.0.consensus,
            &self.0.ca,
            &request.name,
            &request.csr_pem,
            ttl,
        )
        .await?;
        Ok(Response::new(issued_identity(&self.0, cert_pem)))
    }

    async fn list_identities(
        &self,
        request: Request<ListIdentitiesRequest>,
    ) -> Result<Response<ListIdentitiesResponse>, Status> {
        require_admin(&request)?;
        self.0
            .consensus
            .read_barrier()
            .await
            .map_err(ApiError::from)?;
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
        self.0
            .consensus
            .read_barrier()
            .await
            .map_err(ApiError::from)?;
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
        self.0
            .consensus
            .read_barrier()
            .await
            .map_err(ApiError::from)?;
        let internal = |e: pki::PkiError| Status::internal(e.to_string());
        let roots = pki::certs_from_pem(self.0.ca.cert_pem())
            .map_err(internal)?
            .iter()
            .map(|der| {
                let root = pki::identity_of(der).map_err(internal)?;
                Ok(CaRoot {
                    subject: root.common_name,
                    digest: pki::der_digest(der),
                    not_after: identities::unix_seconds(root.not_after),
                })
            })
            .collect::<Result<_, Status>>()?;
        let listed = identities::list(&self.0.store).map_err(ApiError::from)?;
        let mut members = Vec::new();
        for (id, node, _) in self.0.consensus.status().members {
            // Its newest certificate (renewals come later than the one it joined with).
            let newest = listed
                .iter()
                .filter(|(issued, _)| issued.member_id == id || issued.serial == node.cert_serial)
                .max_by_key(|(issued, _)| (issued.issued_at, issued.not_after));
            if let Some((issued, state)) = newest {
                members.push(identity_info(issued.clone(), *state));
            }
        }
        let ttl = identities::member_cert_ttl(&self.0.store).map_err(ApiError::from)?;
        Ok(Response::new(CaStatusResponse {
            roots,
            member_cert_ttl_seconds: ttl.as_secs(),
            members,
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
        let ttl = if lifetime.is_zero() {
            identities::CLIENT_CERT_TTL
        } else {
            lifetime
        };
        let cert_pem = identities::issue_client(
            &self.0.consensus,
            &self.0.ca,
            &caller.common_name,
            &request.get_ref().csr_pem,
            ttl,
        )
        .await?;
        Ok(Response::new(issued_identity(&self.0, cert_pem)))
    }
}

/// What a caller given a new client certificate needs with it.
fn issued_identity(context: &ApiContext, client_cert_pem: String) -> LoginResponse {
    LoginResponse {
        client_cert_pem,
        ca_cert_pem: context.ca.cert_pem().to_string(),
        client_urls: context.consensus.client_urls(),
    }
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
    }
}
