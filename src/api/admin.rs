//! Bulwark's own administration service on the client port (`bulwarkpb.Admin`): showing join
//! tokens. Only the admin identity may call it.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::ApiContext;
use crate::pki::{self, Role};
use crate::proto::bulwarkpb::admin_server::Admin;
use crate::proto::bulwarkpb::{ShowTokenRequest, ShowTokenResponse};

/// The admin identity's common name (etcd's `root` user).
pub const ADMIN_NAME: &str = "root";

/// Where a role's join token lives in the replicated cluster settings.
pub fn token_setting(role: &str) -> Option<&'static str> {
    match role {
        "manager" => Some("join-token/manager"),
        _ => None,
    }
}

pub struct AdminService(pub(super) Arc<ApiContext>);

/// Refuses every caller but the admin client identity.
fn require_admin<T>(request: &Request<T>) -> Result<(), Status> {
    let denied = || Status::permission_denied("etcdserver: permission denied");
    let certs = request.peer_certs().ok_or_else(denied)?;
    let leaf = certs.first().ok_or_else(denied)?;
    let identity = pki::identity_of(leaf.as_ref()).map_err(|_| denied())?;
    if identity.role == Role::Client && identity.common_name == ADMIN_NAME {
        Ok(())
    } else {
        Err(denied())
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn show_token(
        &self,
        request: Request<ShowTokenRequest>,
    ) -> Result<Response<ShowTokenResponse>, Status> {
        require_admin(&request)?;
        let role = &request.get_ref().role;
        let setting = token_setting(role).ok_or_else(|| {
            Status::invalid_argument(format!("unknown role {role:?}: expected \"manager\""))
        })?;
        self.0
            .consensus
            .read_barrier()
            .await
            .map_err(super::error::ApiError::from)?;
        let token = self
            .0
            .store
            .setting(setting)
            .map_err(super::error::ApiError::from)?
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| Status::unavailable("the cluster has no join token yet"))?;
        Ok(Response::new(ShowTokenResponse { token }))
    }
}
