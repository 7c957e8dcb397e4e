//! The global state of the current round, fetched once and shared.
//!
//! In a fleet, hundreds of simulated clients get the same round's parameters; fetching them
//! once per round instead of once per client is what keeps a 1,000-client round cheap. The
//! cache holds one round (the newest fence) and fetches it single-flight.

use crate::connection::Fleet;
use crate::error::Result;
use futures::StreamExt;
use shoal_proto::v1::{Fence, FetchRequest};
use shoal_proto::{ChunkAssembler, MAX_CHUNK_BYTES};
use std::sync::Arc;
use tokio::sync::{Mutex, OnceCell};

type Slot = Arc<OnceCell<Arc<Vec<f32>>>>;

/// Shared, single-flight cache of the newest round's global state.
#[derive(Debug, Default, Clone)]
pub struct GlobalCache {
    slot: Arc<Mutex<Option<(Fence, Slot)>>>,
}

impl GlobalCache {
    /// The global state for `fence`, fetched by `client_id` over `fleet` unless another client
    /// already has it (or is fetching it right now).
    pub async fn get(
        &self,
        fleet: &mut Fleet,
        client_id: &str,
        fence: &Fence,
        len: u64,
    ) -> Result<Arc<Vec<f32>>> {
        if len == 0 {
            return Ok(Arc::new(Vec::new()));
        }
        let cell = {
            let mut slot = self.slot.lock().await;
            match slot.as_ref() {
                Some((f, cell)) if f == fence => cell.clone(),
                _ => {
                    let cell = Slot::default();
                    *slot = Some((fence.clone(), cell.clone()));
                    cell
                }
            }
        };
        let value = cell
            .get_or_try_init(|| fetch(fleet, client_id, fence, len))
            .await?;
        Ok(value.clone())
    }
}

/// Streams the global state for `fence` and checks it has exactly `len` values.
pub async fn fetch(
    fleet: &mut Fleet,
    client_id: &str,
    fence: &Fence,
    len: u64,
) -> Result<Arc<Vec<f32>>> {
    let request = FetchRequest {
        client_id: client_id.to_owned(),
        fence: Some(fence.clone()),
    };
    let mut stream = fleet.fetch_global(request).await?.into_inner();
    let limit = usize::try_from(len).unwrap_or(usize::MAX);
    let mut payload = ChunkAssembler::new(len, limit, MAX_CHUNK_BYTES)?;
    while let Some(chunk) = stream.next().await {
        payload.push(&chunk?)?;
    }
    Ok(Arc::new(payload.finish()?))
}
