//! Receiving a streamed upload — a client's update, a sub-aggregator's partial sum — by one set
//! of rules, for the coordinator's service and a sub-aggregator's alike: the header comes
//! first, then only chunks, each message within [`MESSAGE_GAP`].

use crate::error::CoordinatorError;
use crate::refusal::Refusal;
use futures::{Stream, StreamExt};
use shoal_proto::v1::{Chunk, PartialHeader, PartialPart, UpdateHeader, UpdatePart};
use shoal_proto::v1::{Compression, TaskKind};
use shoal_proto::v1::{partial_part, update_part};
use shoal_proto::{Assembler, ByteAssembler, ChunkAssembler, Codec, ProtoError, WireValue};
use std::sync::Arc;
use std::time::Duration;
use tonic::Status;

/// Longest an upload may go without sending its next message (header or chunk). An honest
/// sender streams a chunk (at most 1 MiB) well within it; a stalled stream would hold its
/// senders' places in the round, so it is ended.
pub const MESSAGE_GAP: Duration = Duration::from_secs(30);

/// Why an upload could not be received.
#[derive(Debug)]
pub enum UploadError {
    /// The stream itself failed (a message over the size limit, bytes that are not protobuf, a
    /// cancelled stream): tonic's status.
    Stream(Status),
    /// Nothing arrived for [`MESSAGE_GAP`].
    Stalled,
    /// The messages broke the protocol: no header first, something else than chunks after it,
    /// chunks that do not make up the declared payload.
    Refused(CoordinatorError),
}

impl UploadError {
    /// The refusal, as the sender hears it.
    pub fn status(self) -> Status {
        match self {
            UploadError::Stream(status) => status,
            UploadError::Stalled => Refusal::StreamStalled.status(format!(
                "update stream sent nothing for {} s",
                MESSAGE_GAP.as_secs()
            )),
            UploadError::Refused(err) => err.into(),
        }
    }
}

impl From<shoal_proto::ProtoError> for UploadError {
    fn from(err: shoal_proto::ProtoError) -> Self {
        UploadError::Refused(err.into())
    }
}

/// One message of an upload: its header, or a chunk of its payload.
pub enum Piece<H> {
    /// The header.
    Header(H),
    /// A chunk.
    Chunk(Chunk),
}

/// The messages of one kind of upload.
pub trait UploadPart {
    /// Its header message.
    type Header;
    /// What is uploaded, for messages: "an update".
    const WHAT: &'static str;
    /// The message as a header or a chunk (`None`: neither was set).
    fn piece(self) -> Option<Piece<Self::Header>>;
}

impl UploadPart for UpdatePart {
    type Header = UpdateHeader;
    const WHAT: &'static str = "an update";
    fn piece(self) -> Option<Piece<UpdateHeader>> {
        match self.part? {
            update_part::Part::Header(h) => Some(Piece::Header(h)),
            update_part::Part::Chunk(c) => Some(Piece::Chunk(c)),
        }
    }
}

impl UploadPart for PartialPart {
    type Header = PartialHeader;
    const WHAT: &'static str = "a partial sum";
    fn piece(self) -> Option<Piece<PartialHeader>> {
        match self.part? {
            partial_part::Part::Header(h) => Some(Piece::Header(h)),
            partial_part::Part::Chunk(c) => Some(Piece::Chunk(c)),
            // Contributions belong right after the header: see [`contributions`].
            partial_part::Part::More(_) => None,
        }
    }
}

/// An upload's messages as they arrive: tonic's `Streaming` off the network, or the parts an
/// in-process client handed over (see [`shoal_proto::DirectFleet`]).
pub trait Parts<P>: Stream<Item = Result<P, Status>> + Unpin + Send {}

impl<P, S: Stream<Item = Result<P, Status>> + Unpin + Send> Parts<P> for S {}

/// The next message, within [`MESSAGE_GAP`]; `None` at the end of the stream.
async fn next<P>(parts: &mut impl Parts<P>) -> Result<Option<P>, UploadError> {
    match tokio::time::timeout(MESSAGE_GAP, parts.next()).await {
        Err(_) => Err(UploadError::Stalled),
        Ok(None) => Ok(None),
        Ok(Some(Err(status))) => Err(UploadError::Stream(status)),
        Ok(Some(Ok(part))) => Ok(Some(part)),
    }
}

/// Reads the upload's header, which must be its first message.
pub async fn header<P: UploadPart>(parts: &mut impl Parts<P>) -> Result<P::Header, UploadError> {
    match next(parts).await?.map(UploadPart::piece) {
        Some(Some(Piece::Header(header))) => Ok(header),
        Some(_) => Err(malformed(format!("{} must start with its header", P::WHAT))),
        None => Err(malformed(format!(
            "empty stream: {} must start with its header",
            P::WHAT
        ))),
    }
}

/// Most clients one partial sum may name (its contributions are held before its clients are
/// checked against the round, so their number is bounded here).
pub const MAX_CONTRIBUTIONS: u64 = 1 << 20;

/// Reads the contributions that follow a partial sum's `header` into it, so that it names
/// every client.
pub async fn contributions(
    parts: &mut impl Parts<PartialPart>,
    header: &mut PartialHeader,
) -> Result<(), UploadError> {
    let count = match header.contribution_count {
        0 => header.contributions.len() as u64,
        declared => declared,
    };
    if count > MAX_CONTRIBUTIONS || header.contributions.len() as u64 > count {
        return Err(malformed(format!(
            "a partial sum declares {count} contributions and its header holds {} (at most {MAX_CONTRIBUTIONS})",
            header.contributions.len()
        )));
    }
    while (header.contributions.len() as u64) < count {
        let had = header.contributions.len();
        match next(parts).await?.and_then(|p| p.part) {
            Some(partial_part::Part::More(more))
                if (had + more.contributions.len()) as u64 <= count =>
            {
                header.contributions.extend(more.contributions);
            }
            _ => {
                return Err(malformed(format!(
                    "a partial sum declares {count} contributions and sent {had} before something else"
                )));
            }
        }
    }
    header.contribution_count = count;
    Ok(())
}

/// Reads the chunks after the header into `payload` until the stream ends; the whole payload.
pub async fn payload<P: UploadPart, T: WireValue>(
    parts: &mut impl Parts<P>,
    mut payload: Assembler<T>,
) -> Result<Vec<T>, UploadError> {
    while let Some(part) = next(parts).await? {
        match part.piece() {
            Some(Piece::Chunk(chunk)) => payload.push(&chunk)?,
            _ => return Err(malformed("only chunks may follow the header".into())),
        }
    }
    Ok(payload.finish()?)
}

/// How a round's updates arrive: plain, or encoded as its task asks (`--compress`), FedAvg's
/// as differences from the round's global state.
#[derive(Debug, Clone)]
pub struct Decoding {
    codec: Codec,
    /// What decoded values are added to: the global state for FIT rounds.
    base: Option<Arc<Vec<f32>>>,
    /// Make room for a plain payload's every value before its first chunk (see
    /// [`Decoding::reserving_all`]).
    reserve_all: bool,
}

impl Decoding {
    /// The decoding of a round of `kind` whose tasks name `codec` and whose global state is
    /// `global`: only FIT and GRADIENT updates are ever compressed.
    pub fn for_round(kind: TaskKind, codec: Codec, global: &Arc<Vec<f32>>) -> Self {
        let (codec, base) = match kind {
            TaskKind::Fit => (codec, Some(global.clone())),
            TaskKind::Gradient => (codec, None),
            _ => (Codec::None, None),
        };
        Decoding {
            codec,
            base,
            reserve_all: false,
        }
    }

    /// The same, making room for a plain payload's every value as soon as its header is
    /// read rather than as its chunks arrive (which regrows and copies a large update a few
    /// times): only for a receiver that admits one upload per client at a time and has held
    /// the declared length to the round's, so a header alone cannot make it reserve more than
    /// the round's honest uploads would.
    pub fn reserving_all(mut self) -> Self {
        self.reserve_all = true;
        self
    }

    /// Receives the payload `header` announces (chunks after the header until the stream
    /// ends) and returns its values: an update compressed otherwise than the round asks, bytes
    /// that do not decode, or more than `max_values` values are refused.
    pub async fn receive(
        &self,
        parts: &mut impl Parts<UpdatePart>,
        header: &UpdateHeader,
        max_values: usize,
        max_chunk_bytes: usize,
    ) -> Result<Vec<f32>, UploadError> {
        self.check_encoding(header)?;
        if self.codec == Codec::None {
            let values = ChunkAssembler::new(header.payload_len, max_values, max_chunk_bytes)?;
            let values = if self.reserve_all {
                values.expecting_all()
            } else {
                values
            };
            return payload(parts, values).await;
        }
        within_limit(header, max_values)?;
        let len = header.payload_len as usize;
        // Before a byte arrives: decoding allocates `len` values, whatever the bytes say.
        if let Some(base) = self.base.as_ref().filter(|b| b.len() != len) {
            return Err(malformed(format!(
                "update of {len} values for a global state of {}",
                base.len()
            )));
        }
        let bytes = ByteAssembler::new(
            header.encoded_len,
            self.codec.encoded_len(len),
            max_chunk_bytes,
        )?;
        let bytes = payload(parts, bytes).await?;
        let mut values = self.codec.decode(&bytes, len)?;
        if let Some(base) = &self.base {
            values
                .iter_mut()
                .zip(base.iter())
                .for_each(|(v, g)| *v += g);
        }
        Ok(values)
    }

    /// Refuses a header whose encoding is not the one the round asks for.
    fn check_encoding(&self, header: &UpdateHeader) -> Result<(), UploadError> {
        let asked = self.codec.wire().0;
        if header.compression != asked as i32 {
            return Err(malformed(format!(
                "update encoded as {}, the round asks for {} (--compress {})",
                Compression::try_from(header.compression).map_or_else(
                    |_| header.compression.to_string(),
                    |c| c.as_str_name().to_owned()
                ),
                asked.as_str_name(),
                self.codec
            )));
        }
        Ok(())
    }

    /// A plain update handed over as its values (an in-process client's): the checks
    /// [`Decoding::receive`] makes of a plain payload, with no bytes to assemble or copy.
    pub fn take_values(
        &self,
        header: &UpdateHeader,
        values: Arc<Vec<f32>>,
        max_values: usize,
    ) -> Result<Arc<Vec<f32>>, UploadError> {
        self.check_encoding(header)?;
        if self.codec != Codec::None {
            return Err(malformed(format!(
                "values handed over in a round whose updates are encoded (--compress {})",
                self.codec
            )));
        }
        within_limit(header, max_values)?;
        // As a stream of chunks would end: short, or with values past the declared length.
        let declared = header.payload_len as usize;
        if values.len() < declared {
            return Err(ProtoError::Truncated {
                got: values.len(),
                declared,
            }
            .into());
        }
        if values.len() > declared {
            return Err(ProtoError::Overflow { declared }.into());
        }
        Ok(values)
    }
}

/// The rest of the stream as it came, to pass it on whole.
pub async fn rest<P>(parts: &mut impl Parts<P>) -> Result<Vec<P>, UploadError> {
    let mut rest = Vec::new();
    while let Some(part) = next(parts).await? {
        rest.push(part);
    }
    Ok(rest)
}

/// Refuses a header that declares more values than the receiver takes.
fn within_limit(header: &UpdateHeader, max_values: usize) -> Result<(), UploadError> {
    if header.payload_len > max_values as u64 {
        return Err(ProtoError::TooLarge {
            declared: header.payload_len,
            limit: max_values,
        }
        .into());
    }
    Ok(())
}

fn malformed(message: String) -> UploadError {
    UploadError::Refused(CoordinatorError::Malformed(message))
}
