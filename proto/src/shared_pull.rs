//! Shared pulls: one long poll answering for many clients of one process, so that an idle
//! simulated client costs a place in a list rather than an HTTP/2 request of its own. A
//! client's answer inside a shared reply is exactly what its own `Pull` would have given, a
//! refusal included ([`Refusal`]), so clients handle both the same way.

use crate::REASON_HEADER;
use crate::v1::Refusal;
use tonic::{Code, Status};

/// Most client ids one shared pull may name. With ids of at most 128 bytes and a task of a
/// few hundred, a full request or reply stays far below the message limit.
pub const MAX_SHARED_PULL: usize = 1024;

impl Refusal {
    /// The refusal a status carries: its code, message and `shoal-reason`.
    pub fn of(status: &Status) -> Self {
        Self {
            code: status.code() as i32,
            message: status.message().to_owned(),
            reason: status
                .metadata()
                .get(REASON_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
        }
    }

    /// The status a client's own request would have been refused with.
    pub fn into_status(self) -> Status {
        let mut status = Status::new(Code::from_i32(self.code), self.message);
        if !self.reason.is_empty()
            && let Ok(reason) = self.reason.parse()
        {
            status.metadata_mut().insert(REASON_HEADER, reason);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_carries_code_message_and_reason_through() {
        let mut status = Status::new(Code::NotFound, "unknown client c7");
        status
            .metadata_mut()
            .insert(REASON_HEADER, "unknown_client".parse().unwrap());
        let back = Refusal::of(&status).into_status();
        assert_eq!(back.code(), Code::NotFound);
        assert_eq!(back.message(), "unknown client c7");
        assert_eq!(
            back.metadata().get(REASON_HEADER).unwrap(),
            "unknown_client"
        );
        // A status without a reason (the transport's) stays without one.
        let plain = Refusal::of(&Status::unavailable("connection reset")).into_status();
        assert_eq!(plain.code(), Code::Unavailable);
        assert!(plain.metadata().get(REASON_HEADER).is_none());
        // A code this build does not know is Unknown, not a panic.
        let odd = Refusal {
            code: 99,
            message: "?".into(),
            reason: "bad\nreason".into(),
        };
        let odd = odd.into_status();
        assert_eq!(odd.code(), Code::Unknown);
        assert!(odd.metadata().get(REASON_HEADER).is_none());
    }
}
