//! S3: gzip-compressed NDJSON objects, rolled by size or age.
//!
//! Records are grouped by the object key template rendered with the file's
//! Airflow fields (for example one group per `dag_id`); each group compresses
//! into memory and becomes one object when it reaches `--s3-max-object-size` or
//! `--s3-max-object-age`, or at shutdown. A group that grows past
//! `--s3-part-size` is uploaded as a multipart upload part by part, so memory
//! stays bounded however large the object gets. A chunk is acknowledged only
//! once the object holding it is complete.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use airside_core::aws::{ErrorClass, classified, classify, describe};
use airside_core::shutdown::Shutdown;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use flate2::Compression;
use flate2::write::GzEncoder;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Acker, OutputError, Retrier, check_destination};
use crate::chunk::Chunk;
use crate::record::AirflowFields;

/// S3's smallest multipart part (except the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

/// Settings of the S3 output.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// The bucket.
    pub bucket: String,
    /// The key prefix (no leading or trailing slash; may be empty).
    pub prefix: String,
    /// The key template below the prefix.
    pub template: String,
    /// Roll an object at this compressed size.
    pub max_object_size: u64,
    /// Roll an object at this age.
    pub max_object_age: Duration,
    /// Multipart part size.
    pub part_size: u64,
    /// The host name used in keys.
    pub host: String,
    /// Upper bound of what all open objects hold in memory together (compressed bytes
    /// plus each compressor's state); beyond it the oldest object is rolled early.
    pub max_buffered: u64,
}

/// What one open object's gzip compressor holds besides its output (window, hash
/// chains, pending buffer at level 1), rounded up.
pub const GROUP_OVERHEAD: u64 = 320 * 1024;

/// The S3 output.
pub struct S3Output {
    client: Client,
    settings: S3Settings,
    name: String,
    acker: Acker,
}

struct Group {
    key: String,
    gz: GzEncoder<Vec<u8>>,
    opened: Instant,
    compressed: u64,
    records: u64,
    raw: u64,
    acks: HashMap<u64, u64>,
    upload: Option<(String, Vec<CompletedPart>)>,
}

/// The placeholders a key template may use.
pub const PLACEHOLDERS: &[&str] = &[
    "{dag_id}",
    "{run_id}",
    "{task_id}",
    "{map_index}",
    "{try_number}",
    "{yyyy}",
    "{mm}",
    "{dd}",
    "{hh}",
    "{mi}",
    "{ss}",
    "{host}",
    "{uuid}",
];

/// Refuses a key template that could give two objects the same key: PutObject replaces
/// an object of the same key, and the checkpoints would still advance past the records
/// the replaced object held, so they would be lost. Only `{uuid}` makes every key new:
/// time fields repeat when two objects of one group roll within the same second (a size
/// roll, then the shutdown close), and `{host}` repeats when a task restarts.
pub fn check_key_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .map(|c| open + c + 1)
            .ok_or_else(|| format!("--s3-key-template {template:?} has a '{{' without its '}}'"))?;
        let placeholder = &rest[open..close];
        if !PLACEHOLDERS.contains(&placeholder) {
            return Err(format!(
                "--s3-key-template {template:?} uses {placeholder}, which is not a placeholder (use {})",
                PLACEHOLDERS.join(" ")
            ));
        }
        rest = &rest[close..];
    }
    if !template.contains("{uuid}") {
        return Err(format!(
            "--s3-key-template {template:?} has no {{uuid}}: two objects could get the same key, and the second PutObject would replace the first, losing logs already acknowledged (time fields repeat within a second, {{host}} across restarts); add {{uuid}}, as the default does: {}",
            crate::config::DEFAULT_KEY_TEMPLATE
        ));
    }
    if template.starts_with('/') || template.is_empty() {
        return Err(format!(
            "--s3-key-template {template:?} must not be empty or start with '/'"
        ));
    }
    Ok(())
}

/// Renders the Airflow placeholders of a key template; time, host and uuid stay.
pub fn render_fields(template: &str, f: &AirflowFields) -> String {
    let none = "_none";
    template
        .replace("{dag_id}", f.dag_id.as_deref().unwrap_or(none))
        .replace("{run_id}", f.run_id.as_deref().unwrap_or(none))
        .replace("{task_id}", f.task_id.as_deref().unwrap_or(none))
        .replace(
            "{map_index}",
            &f.map_index.map_or(none.to_string(), |m| m.to_string()),
        )
        .replace(
            "{try_number}",
            &f.try_number.map_or(none.to_string(), |m| m.to_string()),
        )
}

/// Renders the time (UTC), host and uuid placeholders.
pub fn render_time(template: &str, now: SystemTime, host: &str) -> String {
    let t = humantime::format_rfc3339_seconds(now).to_string(); // 2026-11-22T06:30:00Z
    template
        .replace("{yyyy}", &t[0..4])
        .replace("{mm}", &t[5..7])
        .replace("{dd}", &t[8..10])
        .replace("{hh}", &t[11..13])
        .replace("{mi}", &t[14..16])
        .replace("{ss}", &t[17..19])
        .replace("{host}", host)
        .replace("{uuid}", &uuid4())
}

fn uuid4() -> String {
    let v: u128 = rand::random();
    let h = format!("{v:032x}");
    format!(
        "{}-{}-4{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[16..20],
        &h[20..32]
    )
}

impl S3Output {
    /// Checks that the bucket exists (HeadBucket), then returns the output.
    /// `Ok(None)` when shutdown came first.
    pub async fn connect(
        client: Client,
        settings: S3Settings,
        acker: Acker,
        shutdown: &Shutdown,
    ) -> Result<Option<Self>, OutputError> {
        let name = format!("s3://{}/{}", settings.bucket, settings.prefix);
        let bucket = settings.bucket.clone();
        let ok = check_destination(&name, shutdown, || {
            let client = client.clone();
            let bucket = bucket.clone();
            async move { classified(client.head_bucket().bucket(bucket).send().await).map(|_| ()) }
        })
        .await?;
        Ok(ok.then(|| Self {
            client,
            settings,
            name,
            acker,
        }))
    }

    pub(crate) async fn run(self, mut rx: mpsc::Receiver<Arc<Chunk>>) -> Result<(), OutputError> {
        let mut groups: HashMap<String, Group> = HashMap::new();
        let mut retrier = Retrier::new(&self.name);
        let tick_every = (self.settings.max_object_age / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut tick = tokio::time::interval(tick_every);
        loop {
            tokio::select! {
                chunk = rx.recv() => match chunk {
                    Some(chunk) => {
                        self.add(&mut groups, &chunk, &mut retrier).await?;
                        self.bound_buffers(&mut groups, &mut retrier).await?;
                    }
                    None => {
                        for (_, g) in groups.drain() {
                            self.close(g, &mut retrier).await?;
                        }
                        return Ok(());
                    }
                },
                _ = tick.tick() => {
                    let old: Vec<String> = groups
                        .iter()
                        .filter(|(_, g)| g.opened.elapsed() >= self.settings.max_object_age)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in old {
                        let g = groups.remove(&k).expect("key from map");
                        self.close(g, &mut retrier).await?;
                    }
                }
            }
        }
    }

    async fn add(
        &self,
        groups: &mut HashMap<String, Group>,
        chunk: &Chunk,
        retrier: &mut Retrier,
    ) -> Result<(), OutputError> {
        let gk = render_fields(&self.settings.template, &chunk.meta.airflow);
        let group = groups.entry(gk.clone()).or_insert_with(|| {
            let rel = render_time(&gk, SystemTime::now(), &self.settings.host);
            let key = if self.settings.prefix.is_empty() {
                rel
            } else {
                format!("{}/{}", self.settings.prefix, rel)
            };
            Group {
                key,
                gz: GzEncoder::new(Vec::new(), Compression::fast()),
                opened: Instant::now(),
                compressed: 0,
                records: 0,
                raw: 0,
                acks: HashMap::new(),
                upload: None,
            }
        });
        group
            .gz
            .write_all(&chunk.data)
            .expect("writing to memory cannot fail");
        group.records += chunk.ends.len() as u64;
        group.raw += chunk.data.len() as u64;
        let e = group.acks.entry(chunk.file).or_insert(0);
        *e = (*e).max(chunk.end);
        if group.gz.get_ref().len() as u64 >= self.settings.part_size {
            self.upload_part(group, retrier).await?;
        }
        if group.compressed + group.gz.get_ref().len() as u64 >= self.settings.max_object_size {
            let g = groups.remove(&gk).expect("just used");
            self.close(g, retrier).await?;
        }
        Ok(())
    }

    /// Rolls the oldest open objects early while all of them together hold more than
    /// `--s3-max-buffered`: with a per-task key template, a backlog replay opens an
    /// object per task, and each holds its compressor and its not yet uploaded part.
    async fn bound_buffers(
        &self,
        groups: &mut HashMap<String, Group>,
        retrier: &mut Retrier,
    ) -> Result<(), OutputError> {
        let held = |groups: &HashMap<String, Group>| -> u64 {
            groups
                .values()
                .map(|g| g.gz.get_ref().len() as u64 + GROUP_OVERHEAD)
                .sum()
        };
        let mut total = held(groups);
        while total > self.settings.max_buffered && groups.len() > 1 {
            let oldest = groups
                .iter()
                .min_by_key(|(_, g)| g.opened)
                .map(|(k, _)| k.clone())
                .expect("more than one group");
            let g = groups.remove(&oldest).expect("key from map");
            crate::telemetry::object_rolled_early(&self.name, &g.key, total);
            self.close(g, retrier).await?;
            total = held(groups);
        }
        crate::telemetry::s3_buffered(&self.name, total);
        Ok(())
    }

    async fn upload_part(&self, g: &mut Group, retrier: &mut Retrier) -> Result<(), OutputError> {
        let body = std::mem::take(g.gz.get_mut());
        let upload_id = match &g.upload {
            Some((id, _)) => id.clone(),
            None => {
                let id = loop {
                    match self
                        .client
                        .create_multipart_upload()
                        .bucket(&self.settings.bucket)
                        .key(&g.key)
                        .content_type("application/x-ndjson")
                        .content_encoding("gzip")
                        .send()
                        .await
                    {
                        Ok(out) => break out.upload_id().unwrap_or_default().to_string(),
                        Err(e) => retrier.failed(classify(&e), describe(&e)).await?,
                    }
                };
                g.upload = Some((id.clone(), Vec::new()));
                id
            }
        };
        let number = g.upload.as_ref().map_or(0, |(_, p)| p.len()) as i32 + 1;
        let etag = loop {
            match self
                .client
                .upload_part()
                .bucket(&self.settings.bucket)
                .key(&g.key)
                .upload_id(&upload_id)
                .part_number(number)
                .body(ByteStream::from(body.clone()))
                .send()
                .await
            {
                Ok(out) => break out.e_tag().unwrap_or_default().to_string(),
                Err(e) => retrier.failed(classify(&e), describe(&e)).await?,
            }
        };
        retrier.succeeded();
        g.compressed += body.len() as u64;
        if let Some((_, parts)) = &mut g.upload {
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .e_tag(etag)
                    .build(),
            );
        }
        Ok(())
    }

    async fn close(&self, mut g: Group, retrier: &mut Retrier) -> Result<(), OutputError> {
        let gz = std::mem::replace(&mut g.gz, GzEncoder::new(Vec::new(), Compression::fast()));
        let tail = gz
            .finish()
            .expect("finishing a gzip stream in memory cannot fail");
        if g.upload.is_some() {
            *g.gz.get_mut() = tail;
            self.upload_part(&mut g, retrier).await?;
            let (upload_id, parts) = g.upload.take().expect("checked above");
            loop {
                match self
                    .client
                    .complete_multipart_upload()
                    .bucket(&self.settings.bucket)
                    .key(&g.key)
                    .upload_id(&upload_id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts.clone()))
                            .build(),
                    )
                    .send()
                    .await
                {
                    Ok(_) => break,
                    Err(e) => {
                        let class = classify(&e);
                        // A retried completion whose first try succeeded answers NoSuchUpload.
                        if class == ErrorClass::NotFound && self.exists(&g.key).await {
                            break;
                        }
                        retrier.failed(class, describe(&e)).await?
                    }
                }
            }
        } else if g.records == 0 {
            // Only ranges of the forward buffer meant for other outputs: nothing to
            // write, they are delivered as far as this output goes.
        } else {
            g.compressed = tail.len() as u64;
            loop {
                match self
                    .client
                    .put_object()
                    .bucket(&self.settings.bucket)
                    .key(&g.key)
                    .content_type("application/x-ndjson")
                    .content_encoding("gzip")
                    .body(ByteStream::from(tail.clone()))
                    .send()
                    .await
                {
                    Ok(_) => break,
                    Err(e) => retrier.failed(classify(&e), describe(&e)).await?,
                }
            }
        }
        if g.records > 0 {
            retrier.succeeded();
            crate::telemetry::object_written(&self.name, &g.key, g.records, g.raw, g.compressed);
        }
        for (file, end) in g.acks {
            self.acker.ack(file, end);
        }
        Ok(())
    }

    async fn exists(&self, key: &str) -> bool {
        self.client
            .head_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .send()
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_that_could_repeat_a_key_are_refused() {
        assert_eq!(
            check_key_template(crate::config::DEFAULT_KEY_TEMPLATE),
            Ok(())
        );
        assert_eq!(
            check_key_template("{dag_id}/{run_id}/{task_id}/{try_number}-{uuid}.gz"),
            Ok(())
        );
        for bad in [
            "logs/{dag_id}/{task_id}.ndjson.gz",
            "{yyyy}/{mm}/{dd}/{hh}{mi}{ss}.ndjson.gz",
            "{host}-{hh}{mi}{ss}.gz",
        ] {
            let e = check_key_template(bad).unwrap_err();
            assert!(e.contains("{uuid}"), "{e}");
        }
        assert!(
            check_key_template("{dagid}/{uuid}")
                .unwrap_err()
                .contains("{dagid}")
        );
        assert!(check_key_template("{uuid").is_err());
        assert!(check_key_template("/{uuid}").is_err());
    }

    #[test]
    fn keys_render_fields_and_time() {
        let f = AirflowFields::from_path("/l/dag_id=etl/run_id=r1/task_id=t/attempt=2.log");
        let k = render_fields(crate::config::DEFAULT_KEY_TEMPLATE, &f);
        assert!(k.starts_with("dag_id=etl/{yyyy}/"), "{k}");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000); // 2023-11-14T22:13:20Z
        let full = render_time(&k, t, "host1");
        assert!(
            full.starts_with("dag_id=etl/2023/11/14/host1-221320-"),
            "{full}"
        );
        assert!(full.ends_with(".ndjson.gz"));
        let none = render_fields("{dag_id}/{map_index}", &AirflowFields::default());
        assert_eq!(none, "_none/_none");
    }
}
