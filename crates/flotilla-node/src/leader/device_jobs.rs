//! The writer's part in offline devices (docs/devices.md): a device's push checked whole
//! against its shape before it is merged like a peer data centre's batch, and the registry's
//! changes (devices, their origins, shapes), each a commit of its own.

use super::writer::{ChangeError, MergeJob};
use flotilla_store::devices::{DeviceTxn, DeviceView, Shape};
use flotilla_store::{CommitOutcome, LeaderDb, StoredToken};
use flotilla_types::{Epoch, NodeId, OriginName};
use tokio::sync::oneshot;

#[derive(Debug)]
pub enum DeviceChange {
    Add {
        name: String,
        user: String,
        token: StoredToken,
    },
    /// `given` hears the origin.
    NewOrigin {
        device: String,
        given: oneshot::Sender<String>,
    },
    SetShape(Shape),
    RemoveShape(String),
}

/// A device's push as the merge jobs of its transactions (those the server has not merged
/// yet), or why it is refused whole.
pub(super) fn push_as_merge(
    db: &LeaderDb,
    view: &DeviceView,
    device_origin: OriginName,
    txns: &[DeviceTxn],
) -> Result<Vec<MergeJob>, ChangeError> {
    let prepared = db
        .check_device_batch(view, &device_origin, txns, crate::time::wall_us())?
        .map_err(ChangeError::from)?;
    Ok(prepared
        .into_iter()
        .map(|p| MergeJob {
            stamp: p.stamp,
            changes: p.changes,
            peer: device_origin.clone(),
            peer_at: None,
        })
        .collect())
}

/// Makes a registry change: its commit, or why there is none.
pub(super) fn change(
    db: &mut LeaderDb,
    change: DeviceChange,
    epoch: Epoch,
    origin: &NodeId,
    now_us: u64,
) -> Result<CommitOutcome, ChangeError> {
    let out = match change {
        DeviceChange::Add { name, user, token } => {
            db.add_device(&name, &user, &token, epoch, origin, now_us)
        }
        DeviceChange::NewOrigin { device, given } => db
            .new_device_origin(&device, epoch, origin, now_us)
            .map(|(o, out)| {
                let _ = given.send(o.to_string());
                out
            }),
        DeviceChange::SetShape(shape) => db
            .set_shape(&shape, epoch, origin, now_us)
            .map(|(_, out)| out),
        DeviceChange::RemoveShape(table) => db.remove_shape(&table, epoch, origin, now_us),
    };
    Ok(out?)
}
