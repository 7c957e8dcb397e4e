//! Store-and-forward: what a client does with a finished update once it knows how its push
//! went.
//!
//! An update whose push broke on the way (transport down, coordinator restarting) is kept, and
//! delivered once more after the client has joined again, before it pulls new work (DESIGN.md,
//! "Checkpoints and recovery"). If the coordinator then refuses it (round closed, stale fence,
//! already delivered, not selected) it is dropped and the client goes on with the next task.
//! The decision is a pure function of the push result, so it is tested without a network.

pub use crate::error::reason;

use crate::error::ClientError;
use crate::work::LocalUpdate;
use shoal_proto::v1::{Fence, Task};
use tonic::Code;

/// A finished update that could not be delivered yet, with the fence of its round and the
/// task it carried out.
#[derive(Debug, Clone, PartialEq)]
pub struct KeptUpdate {
    /// The round the update belongs to.
    pub fence: Fence,
    /// The update itself.
    pub update: LocalUpdate,
    /// The task it was computed for.
    pub task: Task,
}

impl KeptUpdate {
    /// Whether `task` asks for exactly the work this update did: the same task, but for the
    /// fence's epoch (a new leader resuming the same round from the same checkpoint).
    pub fn answers(&self, task: &Task) -> bool {
        let without_epoch = |t: &Task| {
            let mut t = t.clone();
            if let Some(fence) = t.fence.as_mut() {
                fence.epoch = 0;
            }
            t
        };
        without_epoch(&self.task) == without_epoch(task)
    }
}

/// What to do with an update after a push attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The coordinator accepted it.
    Delivered,
    /// The push never reached a verdict: keep the update, reconnect, and try again.
    Keep,
    /// The coordinator refused it because its round is over for this client (closed or
    /// foreign round, already delivered, not selected): drop it.
    Stale,
    /// The coordinator refused it for another reason (malformed, too large...): drop it.
    Refused,
}

/// Decides the fate of an update from the result of pushing it.
pub fn disposition(result: &Result<(), ClientError>) -> Disposition {
    let Err(err) = result else {
        return Disposition::Delivered;
    };
    if retryable(err) {
        return Disposition::Keep;
    }
    match err {
        // The coordinator forgot us (it restarted): join again, then try once more.
        ClientError::Refused(s) if s.code() == Code::NotFound => Disposition::Keep,
        ClientError::Refused(s)
            if matches!(
                s.code(),
                Code::FailedPrecondition | Code::AlreadyExists | Code::PermissionDenied
            ) =>
        {
            Disposition::Stale
        }
        _ => Disposition::Refused,
    }
}

/// Errors worth reconnecting for: the transport broke, the coordinator is restarting or
/// overloaded, or the client pulled too fast. A status the coordinator did not write itself
/// (no reason attached: HTTP/2 refused or reset a stream, a proxy answered) is always
/// transient, whatever its code: "resource exhausted: h2 protocol error" is a crowded
/// connection, not a verdict on the client.
pub fn retryable(err: &ClientError) -> bool {
    match err {
        ClientError::Transport(_) => true,
        ClientError::Refused(s) => match reason(s) {
            None => !matches!(
                s.code(),
                Code::Unimplemented | Code::Unauthenticated | Code::PermissionDenied
            ),
            Some(reason) => {
                reason == "rate_limited"
                    || matches!(
                        s.code(),
                        Code::Unavailable
                            | Code::Unknown
                            | Code::Cancelled
                            | Code::DeadlineExceeded
                    )
            }
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    /// A refusal written by the coordinator (it carries a reason).
    fn refused(code: Code) -> Result<(), ClientError> {
        let mut status = Status::new(code, "test");
        status.metadata_mut().insert(
            shoal_proto::REASON_HEADER,
            tonic::metadata::MetadataValue::from_static("test"),
        );
        Err(ClientError::Refused(status))
    }

    #[test]
    fn statuses_the_coordinator_did_not_write_are_transient() {
        for code in [
            Code::ResourceExhausted,
            Code::Internal,
            Code::Unavailable,
            Code::Unknown,
        ] {
            let err = ClientError::Refused(Status::new(code, "h2 protocol error"));
            assert!(retryable(&err), "{code:?}");
        }
        let denied = ClientError::Refused(Status::new(Code::Unauthenticated, "no token"));
        assert!(!retryable(&denied));
        let mut paced = Status::resource_exhausted("pulls too often");
        paced.metadata_mut().insert(
            shoal_proto::REASON_HEADER,
            tonic::metadata::MetadataValue::from_static("rate_limited"),
        );
        assert!(retryable(&ClientError::Refused(paced)));
        assert!(!retryable(&refused(Code::ResourceExhausted).unwrap_err()));
    }

    #[test]
    fn accepted_updates_are_delivered() {
        assert_eq!(disposition(&Ok(())), Disposition::Delivered);
    }

    #[test]
    fn broken_pushes_are_kept_for_after_the_reconnect() {
        for code in [
            Code::Unavailable,
            Code::Unknown,
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::NotFound,
        ] {
            assert_eq!(disposition(&refused(code)), Disposition::Keep, "{code:?}");
        }
    }

    #[test]
    fn refusals_for_a_finished_round_drop_the_update() {
        for code in [
            Code::FailedPrecondition,
            Code::AlreadyExists,
            Code::PermissionDenied,
        ] {
            assert_eq!(disposition(&refused(code)), Disposition::Stale, "{code:?}");
        }
    }

    #[test]
    fn other_refusals_and_local_errors_drop_the_update() {
        for code in [
            Code::InvalidArgument,
            Code::ResourceExhausted,
            Code::Internal,
        ] {
            assert_eq!(
                disposition(&refused(code)),
                Disposition::Refused,
                "{code:?}"
            );
        }
        let local = Err(ClientError::BadTask("x".into()));
        assert_eq!(disposition(&local), Disposition::Refused);
    }
}
