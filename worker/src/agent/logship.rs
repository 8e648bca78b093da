//! The worker's log lines, shipped to CloudWatch Logs as well as written to stderr, so that
//! `ephemera logs RUN` can show them after the instance is gone.
//!
//! Shipping must never slow or fail the work: a line is put in a bounded buffer without waiting
//! (when the buffer is full the line is dropped and counted), a task sends the buffer in batches
//! every few seconds, and what CloudWatch Logs refuses is counted, not retried forever. At exit
//! the rest is sent within a time limit, and the count of lines lost is logged. A process sends
//! at most [`MAX_SHIPPED_BYTES`] in all (every call counted, a batch sent again included):
//! past it lines stay on stderr only, so a chatty job cannot bill past the run's cap through
//! CloudWatch Logs, whose ingestion the budget counts at that bound.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_cloudwatchlogs::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use ephemera_contract::logs::MAX_SHIPPED_BYTES;
use tokio_util::sync::CancellationToken;

/// Lines held while the stream is not known yet or CloudWatch Logs is slow (a few MB at most).
pub const CAPACITY: usize = 10_000;

/// PutLogEvents' limits: 10,000 events and 1,048,576 bytes a call, counting 26 bytes per event
/// on top of its message, and a batch spanning at most 24 hours
/// (https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/API_PutLogEvents.html).
pub const MAX_BATCH_EVENTS: usize = 10_000;
pub const MAX_BATCH_BYTES: usize = 1_048_576;
pub const EVENT_OVERHEAD: usize = 26;
const MAX_BATCH_SPAN_MS: i64 = 24 * 3600 * 1000;
/// Longer lines are cut: the worker's lines are short, and an event has a size limit too.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// How often the buffer is sent.
const PERIOD: Duration = Duration::from_secs(2);
/// Passes a batch refused for a transient reason (throttling, 5xx) is kept for.
const TRANSIENT_TRIES: u32 = 3;

#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub timestamp_ms: i64,
    pub message: String,
}

/// The lines waiting to be shipped.
pub struct Buffer {
    lines: Mutex<VecDeque<Line>>,
    capacity: usize,
    dropped: AtomicU64,
}

impl Buffer {
    pub fn new(capacity: usize) -> Arc<Buffer> {
        Arc::new(Buffer {
            lines: Mutex::new(VecDeque::new()),
            capacity,
            dropped: AtomicU64::new(0),
        })
    }

    /// Adds one line, or counts it as dropped when the buffer is full.
    pub fn push(&self, line: &str) {
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            return;
        }
        // Every line that leaves for CloudWatch Logs, whoever wrote it (job text is redacted
        // where it is relayed already; this is the last door).
        let line = &super::redact::scrub(line);
        let Ok(mut lines) = self.lines.lock() else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if lines.len() >= self.capacity {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Stamped under the lock, so the queue is in time order as PutLogEvents wants.
        lines.push_back(Line {
            timestamp_ms: chrono::Utc::now().timestamp_millis(),
            message: cut(line),
        });
    }

    /// Lines dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.lines.lock().map_or(0, |l| l.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn take_batch(&self) -> Vec<Line> {
        self.lines
            .lock()
            .map(|mut l| next_batch(&mut l))
            .unwrap_or_default()
    }
}

fn cut(line: &str) -> String {
    if line.len() <= MAX_LINE_BYTES {
        return line.to_string();
    }
    let mut end = MAX_LINE_BYTES;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[cut]", &line[..end])
}

/// The oldest lines that fit in one PutLogEvents call, taken off the queue.
pub fn next_batch(queue: &mut VecDeque<Line>) -> Vec<Line> {
    let mut bytes = 0;
    let mut n = 0;
    let first = queue.front().map(|l| l.timestamp_ms);
    for line in queue.iter() {
        let size = line.message.len() + EVENT_OVERHEAD;
        let span = first.map_or(0, |f| line.timestamp_ms - f);
        if n == MAX_BATCH_EVENTS || bytes + size > MAX_BATCH_BYTES || span > MAX_BATCH_SPAN_MS {
            break;
        }
        bytes += size;
        n += 1;
    }
    let mut batch: Vec<Line> = queue.drain(..n).collect();
    // A clock stepped back between two lines must not make the call fail.
    batch.sort_by_key(|l| l.timestamp_ms);
    batch
}

/// The bytes a batch counts for (each message and its 26 bytes, as PutLogEvents counts them).
pub fn batch_bytes(batch: &[Line]) -> u64 {
    batch
        .iter()
        .map(|l| (l.message.len() + EVENT_OVERHEAD) as u64)
        .sum()
}

/// The first lines of `batch` that fit in what is left of `cap` after `sent` bytes, and how many
/// lines did not (dropped: lines are not held back for a later, smaller batch, so the ones that
/// do ship stay in time order).
pub fn within_cap(mut batch: Vec<Line>, sent: u64, cap: u64) -> (Vec<Line>, u64) {
    let mut left = cap.saturating_sub(sent);
    let mut n = 0;
    for l in &batch {
        let size = (l.message.len() + EVENT_OVERHEAD) as u64;
        if size > left {
            break;
        }
        left -= size;
        n += 1;
    }
    let over = (batch.len() - n) as u64;
    batch.truncate(n);
    (batch, over)
}

/// tracing's writer: each event goes to `inner` as before and, line by line, into the buffer.
#[derive(Clone)]
pub struct Tee<W> {
    inner: W,
    buffer: Option<Arc<Buffer>>,
}

impl<W> Tee<W> {
    pub fn new(inner: W, buffer: Option<Arc<Buffer>>) -> Tee<W> {
        Tee { inner, buffer }
    }
}

pub struct TeeWriter<W: Write> {
    inner: W,
    buffer: Option<Arc<Buffer>>,
    event: Vec<u8>,
}

impl<W: Write> Write for TeeWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        if self.buffer.is_some() {
            self.event.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// tracing writes one event through one writer, then drops it: the event is complete here.
impl<W: Write> Drop for TeeWriter<W> {
    fn drop(&mut self) {
        if let Some(buffer) = &self.buffer {
            for line in String::from_utf8_lossy(&self.event).lines() {
                buffer.push(line);
            }
        }
    }
}

impl<'a, W: tracing_subscriber::fmt::MakeWriter<'a>> tracing_subscriber::fmt::MakeWriter<'a>
    for Tee<W>
{
    type Writer = TeeWriter<W::Writer>;
    fn make_writer(&'a self) -> Self::Writer {
        TeeWriter {
            inner: self.inner.make_writer(),
            buffer: self.buffer.clone(),
            event: vec![],
        }
    }
}

/// What became of the lines, at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub shipped: u64,
    /// Refused by CloudWatch Logs (after a few passes when the reason was transient).
    pub refused: u64,
    /// Not sent: the process had sent [`MAX_SHIPPED_BYTES`] already.
    pub over_cap: u64,
    /// Bytes sent, every call counted.
    pub sent_bytes: u64,
}

/// The task sending the buffer to one log stream.
pub struct Shipper {
    buffer: Arc<Buffer>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Stats>,
    target: String,
}

impl Shipper {
    pub fn start(
        client: aws_sdk_cloudwatchlogs::Client,
        group: &str,
        stream: &str,
        buffer: Arc<Buffer>,
    ) -> Shipper {
        let stop = CancellationToken::new();
        let task = tokio::spawn(ship(
            client,
            group.to_string(),
            stream.to_string(),
            buffer.clone(),
            stop.clone(),
            MAX_SHIPPED_BYTES,
        ));
        Shipper {
            buffer,
            stop,
            task,
            target: format!("{group}/{stream}"),
        }
    }

    /// Sends what is left, for at most `patience`; logs (to stderr) what was lost.
    pub async fn finish(self, patience: Duration) -> Stats {
        let dropped = self.buffer.dropped();
        if dropped > 0 {
            // Shipped with the rest if there is room by now.
            tracing::warn!(
                dropped,
                "log lines were dropped: the buffer was full (CloudWatch Logs too slow or unreachable)"
            );
        }
        self.stop.cancel();
        let stats = match tokio::time::timeout(patience, self.task).await {
            Ok(Ok(stats)) => stats,
            _ => Stats::default(),
        };
        let left = self.buffer.len() as u64;
        if stats.refused + stats.over_cap + left + dropped > 0 {
            tracing::warn!(
                target = %self.target,
                shipped = stats.shipped,
                refused = stats.refused,
                over_cap = stats.over_cap,
                cap_bytes = MAX_SHIPPED_BYTES,
                dropped,
                unsent = left,
                "not every log line reached CloudWatch Logs; all of them are on stderr"
            );
        }
        stats
    }
}

async fn ship(
    client: aws_sdk_cloudwatchlogs::Client,
    group: String,
    stream: String,
    buffer: Arc<Buffer>,
    stop: CancellationToken,
    cap: u64,
) -> Stats {
    let mut shipping = Shipping {
        client,
        group,
        stream,
        cap,
        stats: Stats::default(),
        stream_ready: false,
        retry: None,
        warned: false,
    };
    loop {
        let last_pass = stop.is_cancelled();
        if !shipping.stream_ready {
            shipping.create_stream().await;
        }
        while shipping.stream_ready {
            let Some((batch, tries)) = shipping.next_batch(&buffer) else {
                break;
            };
            if !shipping.send(batch, tries, last_pass).await {
                break;
            }
        }
        if last_pass {
            return shipping.stats;
        }
        tokio::select! {
            _ = tokio::time::sleep(PERIOD) => {}
            _ = stop.cancelled() => {}
        }
    }
}

/// The shipping task's state between passes: the stream it sends to, what became of the lines
/// so far, and the batch to send again.
struct Shipping {
    client: aws_sdk_cloudwatchlogs::Client,
    group: String,
    stream: String,
    /// The bytes this process may send in all ([`MAX_SHIPPED_BYTES`]).
    cap: u64,
    stats: Stats,
    stream_ready: bool,
    /// A batch refused for a transient reason, and how many passes it has been tried.
    retry: Option<(Vec<Line>, u32)>,
    warned: bool,
}

impl Shipping {
    /// Warns once in the process's life, however many times shipping fails.
    fn warn(&mut self, what: &str, e: &dyn std::fmt::Display) {
        if !std::mem::replace(&mut self.warned, true) {
            tracing::warn!(group = %self.group, stream = %self.stream, error = %e, "{what}: log lines stay on stderr only");
        }
    }

    /// Makes the log stream (or finds it made).
    async fn create_stream(&mut self) {
        match self
            .client
            .create_log_stream()
            .log_group_name(&self.group)
            .log_stream_name(&self.stream)
            .send()
            .await
        {
            Ok(_) => self.stream_ready = true,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_already_exists_exception()) =>
            {
                self.stream_ready = true
            }
            Err(e) => self.warn("cannot create the log stream", &DisplayErrorContext(&e)),
        }
    }

    /// The batch to send next (the one to send again first) and its passes so far, cut to what
    /// is left of the cap; None when there is nothing to send.
    fn next_batch(&mut self, buffer: &Buffer) -> Option<(Vec<Line>, u32)> {
        loop {
            let (batch, tries) = match self.retry.take() {
                Some(r) => r,
                None => (buffer.take_batch(), 0),
            };
            let (batch, over) = within_cap(batch, self.stats.sent_bytes, self.cap);
            if over > 0 {
                if self.stats.over_cap == 0 {
                    eprintln!("ephemera: the log has reached its {} bytes for CloudWatch Logs; the rest stays on stderr only", self.cap);
                }
                self.stats.over_cap += over;
            }
            if batch.is_empty() {
                if over > 0 {
                    continue;
                }
                return None;
            }
            return Some((batch, tries));
        }
    }

    /// Sends one batch; false when this pass should send no more (the batch is kept to send
    /// again on the next pass).
    async fn send(&mut self, batch: Vec<Line>, tries: u32, last_pass: bool) -> bool {
        let n = batch.len() as u64;
        self.stats.sent_bytes += batch_bytes(&batch);
        let events: Vec<InputLogEvent> = batch
            .iter()
            .filter_map(|l| {
                InputLogEvent::builder()
                    .timestamp(l.timestamp_ms)
                    .message(&l.message)
                    .build()
                    .ok()
            })
            .collect();
        match self
            .client
            .put_log_events()
            .log_group_name(&self.group)
            .log_stream_name(&self.stream)
            .set_log_events(Some(events))
            .send()
            .await
        {
            Ok(_) => self.stats.shipped += n,
            Err(e) if super::link::transient(&e) && tries < TRANSIENT_TRIES && !last_pass => {
                self.warn(
                    "CloudWatch Logs is not taking lines now",
                    &DisplayErrorContext(&e),
                );
                self.retry = Some((batch, tries + 1));
                return false;
            }
            Err(e) => {
                if e.code() == Some("ResourceNotFoundException") {
                    // The stream went away: made again on the next pass.
                    self.stream_ready = false;
                }
                self.warn(
                    "CloudWatch Logs refused log lines",
                    &DisplayErrorContext(&e),
                );
                self.stats.refused += n;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_cloudwatchlogs::operation::create_log_stream::{
        CreateLogStreamError, CreateLogStreamOutput,
    };
    use aws_sdk_cloudwatchlogs::operation::put_log_events::{
        PutLogEventsError, PutLogEventsOutput,
    };
    use aws_sdk_cloudwatchlogs::types::error::ResourceAlreadyExistsException;
    use aws_smithy_mocks::{mock, mock_client, RuleMode};

    fn line(at: i64, message: &str) -> Line {
        Line {
            timestamp_ms: at,
            message: message.into(),
        }
    }

    #[test]
    fn a_batch_keeps_to_the_call_limits() {
        let mut q: VecDeque<Line> = (0..10_005).map(|i| line(i, "x")).collect();
        assert_eq!(next_batch(&mut q).len(), MAX_BATCH_EVENTS);
        assert_eq!(next_batch(&mut q).len(), 5);
        assert!(next_batch(&mut q).is_empty());

        // 1,048,576 bytes: 16 lines of 65,510 bytes + 26 each is 1,048,576 exactly.
        let big = "y".repeat(65_510);
        let mut q: VecDeque<Line> = (0..17).map(|i| line(i, &big)).collect();
        assert_eq!(next_batch(&mut q).len(), 16);
        assert_eq!(q.len(), 1);

        // Never more than 24 hours in one call.
        let day = 24 * 3600 * 1000;
        let mut q: VecDeque<Line> = [line(0, "a"), line(day, "b"), line(day + 1, "c")].into();
        assert_eq!(next_batch(&mut q).len(), 2);
        assert_eq!(next_batch(&mut q), vec![line(day + 1, "c")]);
    }

    #[test]
    fn a_full_buffer_drops_and_counts_and_long_lines_are_cut() {
        let b = Buffer::new(2);
        b.push("one\n");
        b.push("");
        b.push("two");
        b.push("three");
        assert_eq!(b.len(), 2);
        assert_eq!(b.dropped(), 1);
        let b = Buffer::new(1);
        b.push(&"é".repeat(MAX_LINE_BYTES));
        let l = b.take_batch().remove(0).message;
        assert!(
            l.len() <= MAX_LINE_BYTES + 10 && l.ends_with("…[cut]"),
            "{}",
            l.len()
        );
    }

    #[test]
    fn the_tee_writes_through_and_buffers_whole_lines() {
        let b = Buffer::new(10);
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        #[derive(Clone)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = out.clone();
        let tee = Tee::new(move || Sink(sink.clone()), Some(b.clone()));
        {
            use tracing_subscriber::fmt::MakeWriter;
            let mut w = tee.make_writer();
            w.write_all(b"{\"level\":\"INFO\",").unwrap();
            w.write_all(b"\"message\":\"said started\"}\n").unwrap();
            assert!(b.is_empty(), "an event is buffered once it is whole");
        }
        assert_eq!(
            String::from_utf8(out.lock().unwrap().clone()).unwrap(),
            "{\"level\":\"INFO\",\"message\":\"said started\"}\n"
        );
        let got = b.take_batch();
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].message,
            "{\"level\":\"INFO\",\"message\":\"said started\"}"
        );
    }

    fn client(rules: &[&aws_smithy_mocks::Rule]) -> aws_sdk_cloudwatchlogs::Client {
        mock_client!(aws_sdk_cloudwatchlogs, RuleMode::MatchAny, rules, |c| c
            .retry_config(
                aws_sdk_cloudwatchlogs::config::retry::RetryConfig::disabled()
            ))
    }

    #[tokio::test]
    async fn lines_are_shipped_in_order_and_a_throttled_batch_is_sent_again() {
        let create = mock!(aws_sdk_cloudwatchlogs::Client::create_log_stream)
            .match_requests(|r| {
                r.log_group_name() == Some("/ephemera/workers")
                    && r.log_stream_name() == Some("r/1/i-1")
            })
            .then_output(|| CreateLogStreamOutput::builder().build());
        let sent = Arc::new(Mutex::new(vec![]));
        let seen = sent.clone();
        let put = mock!(aws_sdk_cloudwatchlogs::Client::put_log_events)
            .match_requests(move |r| {
                seen.lock().unwrap().push(
                    r.log_events()
                        .iter()
                        .map(|e| e.message().to_string())
                        .collect::<Vec<_>>(),
                );
                true
            })
            .sequence()
            .http_status(429, None)
            .output(|| PutLogEventsOutput::builder().build())
            .repeatedly()
            .build();
        let b = Buffer::new(100);
        b.push("first");
        b.push("second");
        let shipper = Shipper::start(
            client(&[&create, &put]),
            "/ephemera/workers",
            "r/1/i-1",
            b.clone(),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        b.push("third");
        let stats = shipper.finish(Duration::from_secs(10)).await;
        assert_eq!((stats.shipped, stats.refused, stats.over_cap), (3, 0, 0));
        // Every call counts, the one refused with a 429 too: (5 + 26) + (6 + 26) twice, then
        // 5 + 26.
        assert_eq!(stats.sent_bytes, 63 * 2 + 31);
        let sent = sent.lock().unwrap().clone();
        assert_eq!(sent[0], ["first", "second"], "{sent:?}");
        assert_eq!(
            sent[1],
            ["first", "second"],
            "sent again after the 429: {sent:?}"
        );
        assert_eq!(sent[2], ["third"], "{sent:?}");
    }

    #[test]
    fn a_batch_is_cut_where_the_cap_ends() {
        let batch = vec![line(0, "aaaa"), line(1, "bb"), line(2, "c")];
        // 30 + 28 + 27 bytes.
        assert_eq!(batch_bytes(&batch), 85);
        assert_eq!(within_cap(batch.clone(), 0, 85), (batch.clone(), 0));
        let (kept, over) = within_cap(batch.clone(), 0, 84);
        assert_eq!((kept.len(), over), (2, 1));
        // A line that does not fit stops the batch: the smaller one after it is not sent
        // out of order.
        let (kept, over) = within_cap(batch.clone(), 10, 50);
        assert_eq!((kept.len(), over), (1, 2));
        assert_eq!(within_cap(batch, 100, 85), (vec![], 3));
    }

    #[tokio::test]
    async fn a_worker_ships_no_more_than_its_cap() {
        let create = mock!(aws_sdk_cloudwatchlogs::Client::create_log_stream)
            .then_output(|| CreateLogStreamOutput::builder().build());
        let put = mock!(aws_sdk_cloudwatchlogs::Client::put_log_events)
            .then_output(|| PutLogEventsOutput::builder().build());
        let b = Buffer::new(1000);
        for _ in 0..100 {
            b.push(&"z".repeat(74));
        }
        // 100 bytes a line: a cap of 1,050 bytes ships ten lines and no more.
        let stop = CancellationToken::new();
        stop.cancel();
        let client = client(&[&create, &put]);
        let stats = ship(client, "g".into(), "s".into(), b.clone(), stop, 1_050).await;
        assert_eq!((stats.shipped, stats.over_cap), (10, 90), "{stats:?}");
        assert_eq!(stats.sent_bytes, 1_000);
        assert!(b.is_empty());
    }

    #[tokio::test]
    async fn refused_lines_are_counted_and_the_work_is_not_held() {
        // A worker restarted on its instance finds its stream there already.
        let create = mock!(aws_sdk_cloudwatchlogs::Client::create_log_stream).then_error(|| {
            CreateLogStreamError::ResourceAlreadyExistsException(
                ResourceAlreadyExistsException::builder().build(),
            )
        });
        let put = mock!(aws_sdk_cloudwatchlogs::Client::put_log_events).then_error(|| {
            PutLogEventsError::generic(
                aws_sdk_cloudwatchlogs::error::ErrorMetadata::builder()
                    .code("AccessDeniedException")
                    .message("User: worker is not authorized to perform: logs:PutLogEvents")
                    .build(),
            )
        });
        let b = Buffer::new(100);
        b.push("a");
        b.push("b");
        let shipper = Shipper::start(client(&[&create, &put]), "g", "s", b.clone());
        let t0 = std::time::Instant::now();
        let stats = shipper.finish(Duration::from_secs(10)).await;
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        assert_eq!(stats.shipped, 0);
        assert_eq!(stats.refused, 2, "{stats:?}");
        assert_eq!(put.num_calls(), 1);
        assert_eq!(create.num_calls(), 1);
    }
}
