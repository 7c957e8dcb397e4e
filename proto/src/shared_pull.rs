//! Shared pulls: one long poll answering for many clients of one process, so that an idle
//! simulated client costs a place in a list rather than an HTTP/2 request of its own. A
//! client's answer inside a shared reply is exactly what its own `Pull` would have given, a
//! refusal included ([`Refusal`]), so clients handle both the same way.

use crate::REASON_HEADER;
use crate::v1::pull_reply::Reply;
use crate::v1::{ClientPull, PullReply, Refusal, client_pull};
use tonic::{Code, Status};

/// Most client ids one shared pull may name.
pub const MAX_SHARED_PULL: usize = 1024;

/// Most bytes of client ids a sender puts in one shared pull: under the smallest message limit
/// a coordinator may set (64 KiB plus its chunk size), whatever the ids' lengths.
pub const MAX_SHARED_PULL_ID_BYTES: usize = 48 << 10;

/// Checks the client ids of a shared pull before anything is done for any of them: at most
/// [`MAX_SHARED_PULL`], none twice. The error says what is wrong.
pub fn check_ids(ids: &[String]) -> Result<(), String> {
    if ids.len() > MAX_SHARED_PULL {
        return Err(format!(
            "a shared pull names {} clients; at most {MAX_SHARED_PULL} are allowed",
            ids.len()
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    match ids.iter().find(|id| !seen.insert(id.as_str())) {
        Some(twice) => Err(format!("a shared pull names client {twice:?} twice")),
        None => Ok(()),
    }
}

/// Splits the ids a shared pull names into those `authorize` lets the caller speak for and
/// the refusals of the others, answered as each client's own pull would be.
pub fn split_authorized(
    ids: &[String],
    mut authorize: impl FnMut(&str) -> Result<(), Status>,
) -> (Vec<String>, Vec<ClientPull>) {
    let (mut allowed, mut refused) = (Vec::new(), Vec::new());
    for id in ids {
        match authorize(id) {
            Ok(()) => allowed.push(id.clone()),
            Err(status) => refused.push(ClientPull::refused(id.clone(), &status)),
        }
    }
    (allowed, refused)
}

impl ClientPull {
    /// `client_id`'s answer: what its own pull would have replied.
    pub fn answered(client_id: String, reply: Reply) -> Self {
        Self {
            client_id,
            answer: Some(client_pull::Answer::Reply(PullReply { reply: Some(reply) })),
        }
    }

    /// `client_id`'s answer: the refusal its own pull would have met.
    pub fn refused(client_id: String, status: &Status) -> Self {
        Self {
            client_id,
            answer: Some(client_pull::Answer::Refused(Refusal::of(status))),
        }
    }
}

impl client_pull::Answer {
    /// What the client's own pull would have returned.
    pub fn into_result(self) -> Result<PullReply, Status> {
        match self {
            Self::Reply(reply) => Ok(reply),
            Self::Refused(refusal) => Err(refusal.into_status()),
        }
    }
}

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
    fn ids_are_checked_for_count_and_repeats() {
        let ids = |n: usize| (0..n).map(|i| format!("c{i}")).collect::<Vec<_>>();
        assert!(check_ids(&[]).is_ok());
        assert!(check_ids(&ids(MAX_SHARED_PULL)).is_ok());
        assert!(
            check_ids(&ids(MAX_SHARED_PULL + 1))
                .unwrap_err()
                .contains("at most")
        );
        let twice = ["a".to_string(), "b".to_string(), "a".to_string()];
        assert!(check_ids(&twice).unwrap_err().contains("\"a\" twice"));
    }

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
