//! etcd's `Watch` service: hands each client stream to the `watch` module.

use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::ApiContext;
use crate::proto::etcdserverpb::watch_server::Watch;
use crate::proto::etcdserverpb::{WatchRequest, WatchResponse};
use crate::watch::{self, HeaderFn, WatchSettings};

pub struct WatchService {
    pub(super) context: Arc<ApiContext>,
    pub(super) settings: WatchSettings,
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let context = self.context.clone();
        let header: HeaderFn = Arc::new(move |revision| context.header(revision));
        Ok(Response::new(watch::serve_stream(
            self.context.store.clone(),
            header,
            request.into_inner(),
            self.settings,
        )))
    }
}
