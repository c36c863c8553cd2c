//! An MLLP relay for HL7 v2 feeds that leave the clinical network: each
//! message a sender writes is tokenized (or detokenized) with the HL7
//! rules, passed to the receiver, and the receiver's acknowledgement passed
//! back. A message that cannot be rewritten whole is never passed on: the
//! sender gets a negative acknowledgement naming the part and the reason,
//! never a value — `MSA|AE` when the message itself is at fault (send it
//! again and it fails again), `MSA|AR` when the vault or the receiver is
//! out of reach (send it again later).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::hl7::{Delimiters, END_BLOCK, Hl7Layout, START_BLOCK};
use super::pipeline::BATCH_BYTES;
use super::{Batches, Direction, MAX_UNIT_BYTES, Unit, splice};
use crate::{Client, ClientError, code_name};

/// How long the receiver may take to acknowledge a message.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);
/// Senders served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 256;
/// Items of one namespace in one request, as a bulk run sends them.
const BATCH_ITEMS: usize = 1_000;

/// What the relay does with each message.
#[derive(Clone)]
pub struct Relay {
    /// The vault.
    pub client: Client,
    /// The rules.
    pub layout: Arc<Hl7Layout>,
    /// Tokenize (messages leaving) or detokenize (messages coming back).
    pub direction: Direction,
    /// Where messages go.
    pub forward: String,
    /// How long to keep trying the vault for one message.
    pub retry_for: Duration,
}

/// Why the relay stopped.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RelayError(String);

/// Why a message was not passed on.
enum Refusal {
    /// The message itself: the same message fails again (`AE`).
    Content(String),
    /// The vault or the receiver: the message may go through later (`AR`).
    Unreachable(String),
}

impl Relay {
    /// Serves senders on `listener` until the process ends, each
    /// connection on its own task, at most [`MAX_CONNECTIONS`] at once.
    pub async fn serve(self, listener: TcpListener) -> Result<(), RelayError> {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let slot = Arc::clone(&slots)
                .acquire_owned()
                .await
                .map_err(|_| RelayError("the relay is closing".into()))?;
            let (sender, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                // Out of file descriptors, a connection reset before it was
                // accepted: the next one may do.
                Err(e) => {
                    say(&format!("cannot accept a connection: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let relay = self.clone();
            tokio::spawn(async move {
                relay.connection(sender, peer).await;
                drop(slot);
            });
        }
    }

    /// One sender's connection: frames in order, each acknowledged before
    /// the next is read, as MLLP has it. The receiver is connected to when
    /// the first message is ready and kept for the sender's connection.
    async fn connection(&self, sender: TcpStream, peer: SocketAddr) {
        let (read, mut write) = sender.into_split();
        let mut read = BufReader::new(read);
        let mut receiver: Option<BufReader<TcpStream>> = None;
        let mut frame = Vec::new();
        loop {
            frame.clear();
            // A large frame's buffer is not kept for the connection's life.
            frame.shrink_to(1 << 20);
            match read_frame(&mut read, &mut frame).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(why) => {
                    say(&format!("{peer}: {why}; connection closed"));
                    return;
                }
            }
            let answer = match self.relay(&frame, &mut receiver).await {
                Ok(ack) => ack,
                Err(Refusal::Content(why)) => ack(&frame, "AE", &self.told(&why)),
                Err(Refusal::Unreachable(why)) => ack(&frame, "AR", &why),
            };
            if write.write_all(&answer).await.is_err() {
                return;
            }
        }
    }

    /// What a refusal tells the sender. Revealing, the sender stands
    /// outside the network: it learns that the message failed, not which
    /// token of it was unknown.
    fn told(&self, why: &str) -> String {
        match self.direction {
            Direction::Tokenize => why.to_owned(),
            Direction::Detokenize { .. } => "the message could not be detokenized".into(),
        }
    }

    /// The receiver's acknowledgement of `frame` (a whole MLLP frame), once
    /// it is rewritten and passed on.
    async fn relay(
        &self,
        frame: &[u8],
        receiver: &mut Option<BufReader<TcpStream>>,
    ) -> Result<Vec<u8>, Refusal> {
        let rewritten = self.rewrite(frame).await?;
        let control = control_id(frame);
        // A connection kept from the last message may have been closed by
        // the receiver since: one fresh connection is tried before giving up.
        for attempt in 0..2 {
            if receiver.is_none() {
                let stream = TcpStream::connect(&self.forward)
                    .await
                    .map_err(|_| Refusal::Unreachable("the receiver cannot be reached".into()))?;
                *receiver = Some(BufReader::new(stream));
            }
            let Some(stream) = receiver.as_mut() else {
                continue;
            };
            if stream.get_mut().write_all(&rewritten).await.is_err() {
                *receiver = None;
                if attempt == 0 {
                    continue;
                }
                return Err(Refusal::Unreachable(
                    "the receiver closed the connection".into(),
                ));
            }
            let answered =
                tokio::time::timeout(ACK_TIMEOUT, acknowledgement(stream, &control)).await;
            return match answered {
                Ok(Ok(ack)) => Ok(match self.direction {
                    Direction::Tokenize => ack,
                    // The receiver stands inside: its words (MSA-3, ERR)
                    // may hold what was revealed to it.
                    Direction::Detokenize { .. } => {
                        let code = ack_code(&ack);
                        self::ack(frame, &code, "")
                    }
                }),
                Ok(Err(why)) => {
                    *receiver = None;
                    Err(Refusal::Unreachable(why.into()))
                }
                Err(_) => {
                    *receiver = None;
                    Err(Refusal::Unreachable(
                        "the receiver did not acknowledge in 60 s; it may hold the message".into(),
                    ))
                }
            };
        }
        Err(Refusal::Unreachable(
            "the receiver cannot be reached".into(),
        ))
    }

    /// The frame with its mapped cells replaced; a refusal names the first
    /// part that could not be, and why.
    async fn rewrite(&self, frame: &[u8]) -> Result<Vec<u8>, Refusal> {
        let mut unit = Unit {
            row: 1,
            line: 1,
            raw: frame.to_vec(),
            cells: Vec::new(),
            problem: None,
        };
        let body = 1..frame.len().saturating_sub(2);
        self.layout
            .find(&unit.raw, body, &mut unit.cells)
            .map_err(|why| Refusal::Content(why.to_owned()))?;
        let names = self.layout.names();
        let mut batches = Batches::new(BATCH_ITEMS);
        for (i, cell) in unit.cells.iter_mut().enumerate() {
            let text = match &mut cell.text {
                Ok(text) if text.len() <= BATCH_BYTES => std::mem::take(text),
                Ok(_) => {
                    let at = names.location(&cell.location);
                    return Err(Refusal::Content(format!("{at}: longer than 1 MiB")));
                }
                Err(why) => {
                    let at = names.location(&cell.location);
                    return Err(Refusal::Content(format!("{at}: {why}")));
                }
            };
            batches.push(&names.namespaces[cell.namespace], text, i);
        }
        let answers = batches
            .send(&self.client, self.direction, 4, self.retry_for)
            .await
            .map_err(|e| match e {
                ClientError::Status(status) if status.code() != tonic::Code::Unavailable => {
                    Refusal::Unreachable(format!(
                        "the vault refused the message: {}",
                        code_name(status.code() as i32)
                    ))
                }
                _ => Refusal::Unreachable("the vault cannot be reached".into()),
            })?;
        let mut texts: Vec<(usize, String)> = Vec::with_capacity(answers.len());
        for (cell, answer) in answers {
            match answer {
                Ok(text) => texts.push((cell, text)),
                Err(e) => {
                    let c = &unit.cells[cell];
                    return Err(Refusal::Content(format!(
                        "{} ({}): {}",
                        names.location(&c.location),
                        names.namespaces[c.namespace],
                        code_name(e.code)
                    )));
                }
            }
        }
        // `tokenize_all` checks that every batch got one answer per item.
        let mut replacements: Vec<(usize, &str)> = texts
            .iter()
            .map(|(cell, text)| (*cell, text.as_str()))
            .collect();
        let mut out = Vec::with_capacity(frame.len() + 64);
        splice(&unit, &mut replacements, &mut out);
        Ok(out)
    }
}

/// The receiver's acknowledgement of the message whose control ID is
/// `control`: frames acknowledging another (a duplicate, an enhanced-mode
/// commit before the application's answer) are passed over.
async fn acknowledgement(
    stream: &mut BufReader<TcpStream>,
    control: &[u8],
) -> Result<Vec<u8>, &'static str> {
    loop {
        let mut ack = Vec::new();
        if !read_frame(stream, &mut ack).await? {
            return Err("the receiver closed the connection before acknowledging");
        }
        if msa(&ack).get(1).is_some_and(|id| id.as_slice() == control) {
            return Ok(ack);
        }
    }
}

/// MSA-1 of an acknowledgement, `AE` when it has none.
fn ack_code(ack: &[u8]) -> String {
    msa(ack)
        .first()
        .map(|code| String::from_utf8_lossy(code).into_owned())
        .filter(|code| ["AA", "AE", "AR", "CA", "CE", "CR"].contains(&code.as_str()))
        .unwrap_or_else(|| "AE".into())
}

/// The fields of an acknowledgement's MSA segment after its name.
fn msa(ack: &[u8]) -> Vec<Vec<u8>> {
    let (_, d) = header(ack);
    segments(ack)
        .find(|s| s.starts_with(b"MSA"))
        .map(|s| {
            s.split(|b| *b == d.field())
                .skip(1)
                .map(<[u8]>::to_vec)
                .collect()
        })
        .unwrap_or_default()
}

/// MSH-10 of a frame.
fn control_id(frame: &[u8]) -> Vec<u8> {
    let (msh, d) = header(frame);
    msh.split(|b| *b == d.field())
        .nth(9)
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

/// The segments of a frame's message.
fn segments(frame: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = &frame[1.min(frame.len())..frame.len().saturating_sub(2)];
    body.split(|b| *b == b'\r' || *b == b'\n')
        .map(<[u8]>::trim_ascii_start)
}

/// A frame's MSH segment and its delimiters (the standard ones when it has
/// none that can be read).
fn header(frame: &[u8]) -> (&[u8], Delimiters) {
    let msh = segments(frame)
        .find(|s| s.starts_with(b"MSH"))
        .unwrap_or_default();
    let d = Delimiters::read(msh).unwrap_or_else(|_| Delimiters::standard());
    (msh, d)
}

/// Reads one MLLP frame (start block to end block and carriage return)
/// into `frame`, white space before it passed over; false at the end of the
/// connection before a frame begins.
async fn read_frame<R: AsyncBufReadExt + Unpin>(
    read: &mut R,
    frame: &mut Vec<u8>,
) -> Result<bool, &'static str> {
    let mut before = Vec::new();
    let limit = MAX_UNIT_BYTES as u64 + 1;
    // White space between frames is passed over; a sender that ends its
    // connection after some is done, not broken.
    let n = (&mut *read)
        .take(limit)
        .read_until(START_BLOCK, &mut before)
        .await
        .map_err(|_| "the connection failed")?;
    if n == 0 {
        return Ok(false);
    }
    if before.last() != Some(&START_BLOCK) {
        return if before.iter().all(u8::is_ascii_whitespace) {
            Ok(false)
        } else {
            Err("bytes outside an MLLP frame")
        };
    }
    if !before[..before.len() - 1]
        .iter()
        .all(u8::is_ascii_whitespace)
    {
        return Err("bytes outside an MLLP frame");
    }
    frame.push(START_BLOCK);
    (&mut *read)
        .take(limit)
        .read_until(END_BLOCK, frame)
        .await
        .map_err(|_| "the connection failed")?;
    if frame.last() != Some(&END_BLOCK) {
        return Err("a frame larger than 64 MiB, or not closed");
    }
    let mut end = [0u8];
    read.read_exact(&mut end)
        .await
        .map_err(|_| "the connection ended inside a frame")?;
    if end[0] != b'\r' {
        return Err("an MLLP frame does not end with 0x1C 0x0D");
    }
    frame.push(b'\r');
    Ok(true)
}

/// Numbers the relay's own acknowledgements within a second.
static ACKS: AtomicU32 = AtomicU32::new(0);

/// An HL7 acknowledgement of `frame` with `code` (MSA-1) and `text`
/// (MSA-3: a part and a reason, never a value), in its delimiters and
/// addressed back to its sender.
fn ack(frame: &[u8], code: &str, text: &str) -> Vec<u8> {
    let (msh, d) = header(frame);
    let standard = Delimiters::read(msh).is_err();
    let fields: Vec<&[u8]> = msh.split(|b| *b == d.field()).collect();
    // MSH-n is element n - 1: MSH-1 is the separator itself.
    let field = |n: usize| fields.get(n - 1).copied().unwrap_or_default();
    let trigger = field(9)
        .split(|b| *b == d.component())
        .nth(1)
        .unwrap_or_default();
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let now: String = now.chars().filter(char::is_ascii_digit).collect();
    // At most 20 characters, as MSH-10 is before v2.7: seconds since the
    // epoch and a counter.
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let id = format!(
        "PV{seconds}{:04}",
        ACKS.fetch_add(1, Ordering::Relaxed) % 10_000
    );
    let (f, c) = (d.field() as char, d.component() as char);
    let mut out = vec![START_BLOCK];
    out.extend_from_slice(b"MSH");
    out.push(d.field());
    out.extend_from_slice(if standard { b"^~\\&" } else { field(2) });
    for part in [field(5), field(6), field(3), field(4)] {
        out.push(d.field());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(format!("{f}{now}+0000{f}{f}ACK{c}").as_bytes());
    out.extend_from_slice(trigger);
    out.extend_from_slice(format!("{f}{id}{f}").as_bytes());
    let processing = field(11);
    out.extend_from_slice(if processing.is_empty() {
        b"P"
    } else {
        processing
    });
    out.push(d.field());
    out.extend_from_slice(field(12));
    out.extend_from_slice(format!("\rMSA{f}{code}{f}").as_bytes());
    out.extend_from_slice(field(10));
    if !text.is_empty() {
        out.push(d.field());
        d.encode(&format!("phivault: {text}"), &mut out);
    }
    out.extend_from_slice(&[b'\r', END_BLOCK, b'\r']);
    out
}

/// The relay's one line per dropped connection, on standard error: it
/// names the peer and the reason, never a message's content.
fn say(line: &str) {
    eprintln!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_answers_the_sender_in_its_delimiters_and_names_no_value() {
        let frame = b"\x0bMSH#*@!$#ADT1#GHH#LAB#GHH2#20260101##ADT*A08#CTRL7#P#2.5\rPID#1##X1***MR##DOE*JANE\r\x1c\r";
        let refused = ack(frame, "AE", "PID-5.1.1 (name): INVALID_ARGUMENT #1");
        let text = String::from_utf8(refused).expect("utf-8");
        assert!(
            text.starts_with("\x0bMSH#*@!$#LAB#GHH2#ADT1#GHH#"),
            "{text}"
        );
        assert!(text.contains("+0000##ACK*A08#PV"), "{text}");
        assert!(text.contains("#P#2.5\rMSA#AE#CTRL7#"), "{text}");
        assert!(
            text.contains(
                "\rMSA#AE#CTRL7#phivault: PID-5.1.1 (name): INVALID_ARGUMENT !F!1\r\x1c\r"
            ),
            "{text}"
        );
        assert!(!text.contains("DOE") && !text.contains("X1"));
        // A frame without a readable MSH still gets an answer.
        let refused = ack(b"\x0bPID|1\r\x1c\r", "AR", "the vault cannot be reached");
        assert!(refused.starts_with(b"\x0bMSH|^~\\&|") && refused.ends_with(b"\r\x1c\r"));
        // The receiver's answer is matched by the control ID it repeats.
        assert_eq!(control_id(frame), b"CTRL7");
        assert_eq!(ack_code(&ack(frame, "AA", "")), "AA");
        assert_eq!(msa(&ack(frame, "AA", ""))[1], b"CTRL7");
    }
}
