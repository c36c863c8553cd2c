//! An MLLP relay for HL7 v2 feeds that leave the clinical network: each
//! message a sender writes is tokenized (or detokenized) with the HL7
//! rules, passed to the receiver, and the receiver's acknowledgement passed
//! back. A message that cannot be sent whole is never passed on: the sender
//! gets a negative acknowledgement (`MSA|AE`) naming the part and the
//! reason, never a value, and sends it again as MLLP senders do.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::hl7::{Delimiters, END_BLOCK, Hl7Layout, START_BLOCK};
use super::{Direction, MAX_UNIT_BYTES, Unit, splice};
use crate::{Batch, Client, ClientError, code_name};

/// How long the receiver may take to acknowledge a message.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);

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

impl Relay {
    /// Serves senders on `listener` until the process ends, each
    /// connection on its own task.
    pub async fn serve(self, listener: TcpListener) -> Result<(), RelayError> {
        loop {
            let (sender, peer) = listener
                .accept()
                .await
                .map_err(|e| RelayError(format!("cannot accept a connection: {e}")))?;
            let relay = self.clone();
            tokio::spawn(async move { relay.connection(sender, peer).await });
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
                Err(why) => negative_ack(&frame, &why),
            };
            if write.write_all(&answer).await.is_err() {
                return;
            }
        }
    }

    /// The receiver's acknowledgement of `frame` (a whole MLLP frame), once
    /// it is rewritten and passed on; `Err` says why it was not.
    async fn relay(
        &self,
        frame: &[u8],
        receiver: &mut Option<BufReader<TcpStream>>,
    ) -> Result<Vec<u8>, String> {
        let rewritten = self.rewrite(frame).await?;
        if receiver.is_none() {
            let stream = TcpStream::connect(&self.forward)
                .await
                .map_err(|_| "the receiver cannot be reached".to_owned())?;
            *receiver = Some(BufReader::new(stream));
        }
        let Some(stream) = receiver.as_mut() else {
            return Err("the receiver cannot be reached".into());
        };
        let mut ack = Vec::new();
        let answered = match stream.get_mut().write_all(&rewritten).await {
            Err(_) => Err("the receiver closed the connection"),
            Ok(()) => match tokio::time::timeout(ACK_TIMEOUT, read_frame(stream, &mut ack)).await {
                Ok(Ok(true)) => Ok(ack),
                Ok(_) => Err("the receiver closed the connection before acknowledging"),
                Err(_) => Err("the receiver did not acknowledge in 60 s"),
            },
        };
        // A receiver that failed mid-message is connected to afresh: what
        // it holds of the connection is unknown.
        if answered.is_err() {
            *receiver = None;
        }
        answered.map_err(str::to_owned)
    }

    /// The frame with its mapped cells replaced; `Err` names the first part
    /// that could not be, and why.
    async fn rewrite(&self, frame: &[u8]) -> Result<Vec<u8>, String> {
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
            .map_err(str::to_owned)?;
        let names = self.layout.names();
        let mut batches: Vec<Batch> = Vec::new();
        let mut targets: Vec<Vec<usize>> = Vec::new();
        for (i, cell) in unit.cells.iter_mut().enumerate() {
            let namespace = &names.namespaces[cell.namespace];
            let text = match &mut cell.text {
                Ok(text) => std::mem::take(text),
                Err(why) => {
                    return Err(format!("{}: {why}", names.location(&cell.location)));
                }
            };
            let at = match batches.iter().position(|b| &b.namespace == namespace) {
                Some(at) => at,
                None => {
                    batches.push(Batch {
                        namespace: namespace.clone(),
                        items: Vec::new(),
                    });
                    targets.push(Vec::new());
                    batches.len() - 1
                }
            };
            batches[at].items.push(text);
            targets[at].push(i);
        }
        let answers = match self.direction {
            Direction::Tokenize => self.client.tokenize_all(batches, 4, self.retry_for).await,
            Direction::Detokenize { masked } => {
                self.client
                    .detokenize_all(batches, masked, 4, self.retry_for)
                    .await
            }
        }
        .map_err(|e| match e {
            ClientError::Status(status) => format!(
                "the vault refused the message: {}",
                code_name(status.code() as i32)
            ),
            _ => "the vault cannot be reached".into(),
        })?;
        let mut texts: Vec<(usize, String)> = Vec::with_capacity(unit.cells.len());
        for (answers, targets) in answers.into_iter().zip(targets) {
            for (answer, cell) in answers.into_iter().zip(targets) {
                match answer {
                    Ok(text) => texts.push((cell, text)),
                    Err(e) => {
                        let c = &unit.cells[cell];
                        return Err(format!(
                            "{} ({}): {}",
                            names.location(&c.location),
                            names.namespaces[c.namespace],
                            code_name(e.code)
                        ));
                    }
                }
            }
        }
        if texts.len() != unit.cells.len() {
            return Err("the vault answered too few items".into());
        }
        let mut replacements: Vec<(usize, &str)> = texts
            .iter()
            .map(|(cell, text)| (*cell, text.as_str()))
            .collect();
        let mut out = Vec::with_capacity(frame.len() + 64);
        splice(&unit, &mut replacements, &mut out);
        Ok(out)
    }
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
    let n = (&mut *read)
        .take(limit)
        .read_until(START_BLOCK, &mut before)
        .await
        .map_err(|_| "the connection failed")?;
    if n == 0 {
        return Ok(false);
    }
    if before.last() != Some(&START_BLOCK) {
        return Err("the connection ended inside a frame");
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

/// An HL7 acknowledgement refusing `frame` (`MSA|AE`), in its delimiters,
/// addressed back to its sender, naming `why` (a part and a reason, never a
/// value).
fn negative_ack(frame: &[u8], why: &str) -> Vec<u8> {
    let body = &frame[1.min(frame.len())..frame.len().saturating_sub(2)];
    let msh = body
        .split(|b| *b == b'\r' || *b == b'\n')
        .map(<[u8]>::trim_ascii_start)
        .find(|s| s.starts_with(b"MSH"))
        .unwrap_or_default();
    let d = Delimiters::read(msh).unwrap_or_else(|_| Delimiters::standard());
    let fields: Vec<&[u8]> = msh.split(|b| *b == d.field()).collect();
    // MSH-n is element n - 1: MSH-1 is the separator itself.
    let field = |n: usize| fields.get(n - 1).copied().unwrap_or_default();
    let trigger = field(9)
        .split(|b| *b == d.component())
        .nth(1)
        .unwrap_or_default();
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let now: String = now.chars().filter(char::is_ascii_digit).collect();
    let f = d.field() as char;
    let c = d.component() as char;
    let mut ack = vec![START_BLOCK];
    ack.extend_from_slice(b"MSH");
    ack.push(d.field());
    ack.extend_from_slice(fields.get(1).copied().unwrap_or(b"^~\\&"));
    for part in [field(5), field(6), field(3), field(4)] {
        ack.push(d.field());
        ack.extend_from_slice(part);
    }
    ack.extend_from_slice(format!("{f}{now}{f}{f}ACK{c}").as_bytes());
    ack.extend_from_slice(trigger);
    ack.extend_from_slice(format!("{f}PHIVAULT{now}{f}P{f}").as_bytes());
    ack.extend_from_slice(field(12));
    ack.extend_from_slice(format!("\rMSA{f}AE{f}").as_bytes());
    ack.extend_from_slice(field(10));
    ack.push(d.field());
    d.encode(&format!("phivault: {why}"), &mut ack);
    ack.extend_from_slice(&[b'\r', END_BLOCK, b'\r']);
    ack
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
        let ack = negative_ack(frame, "PID-5.1.1 (name): INVALID_ARGUMENT #1");
        let text = String::from_utf8(ack).expect("utf-8");
        assert!(
            text.starts_with("\x0bMSH#*@!$#LAB#GHH2#ADT1#GHH#"),
            "{text}"
        );
        assert!(text.contains("#ACK*A08#PHIVAULT"), "{text}");
        assert!(
            text.contains(
                "\rMSA#AE#CTRL7#phivault: PID-5.1.1 (name): INVALID_ARGUMENT !F!1\r\x1c\r"
            ),
            "{text}"
        );
        assert!(!text.contains("DOE") && !text.contains("X1"));
        // A frame without a readable MSH still gets an answer.
        let ack = negative_ack(
            b"\x0bPID|1\r\x1c\r",
            "a segment comes before any MSH segment",
        );
        assert!(ack.starts_with(b"\x0bMSH|^~\\&|") && ack.ends_with(b"\r\x1c\r"));
    }
}
