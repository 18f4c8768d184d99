//! Submitting, reading, listing, cancelling and counting jobs; change events. (Redis)

use std::collections::HashMap;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{RedisStore, record_from_map};
use crate::auth::rate::{RateCheck, RateDecision};
use crate::clock;
use crate::job::{JobId, JobRecord, NewJob};
use crate::store::KeyStore;
use crate::store::{
    CancelOutcome, DeadLetter, JobEvent, JobPage, JobQueue, ListQuery, QueueStats, Refusal,
    StoreError, StoreKind,
};

/// Index entries examined at most by one `list` call when filtering by status.
const LIST_SCAN_LIMIT: usize = 2000;

/// A status hash's fields as the JSON object the scripts publish, written
/// straight from them.
struct EventOf<'a>(&'a [(&'static str, String)]);

impl serde::Serialize for EventOf<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// A rate limit's decision from the scripts' four figures (`gcra.lua`).
pub(super) fn decision_of(figures: &[i64]) -> RateDecision {
    let get = |i: usize| figures.get(i).copied().unwrap_or(0);
    RateDecision {
        allowed: get(0) == 1,
        remaining: get(1).max(0) as u32,
        reset_secs: get(2).max(0) as f64 / 1000.0,
        retry_after_secs: get(3).max(0) as f64 / 1000.0,
    }
}

/// How many keys `enqueue_push.lua` takes (the events channel follows them in
/// [`push_keys`]).
const PUSH_KEYS: usize = 17;

/// The keys `enqueue_push.lua` takes, in its order, then the events channel: the
/// same for every submission, so named once.
pub(super) fn push_keys(k: &super::KeyNames) -> Vec<String> {
    let mut keys = vec![k.queue(), k.index(), k.pending(), k.seq()];
    keys.extend(k.status_indexes());
    keys.extend(k.lane_keys());
    keys.push(k.requirement_sets());
    debug_assert_eq!(keys.len(), PUSH_KEYS);
    keys.push(k.events());
    keys
}

impl RedisStore {
    /// One try at queueing `job` as `record`: `enqueue.lua` in one step, or in a
    /// Cluster the status hash and then the push (the hash taken back if the
    /// push refuses). `with_json`: the requirement set's JSON goes along, for
    /// the script to register it. The scripts' answer: a sequence number, 0 for
    /// a taken id, or a refusal (see `enqueue_push.lua`).
    async fn push(
        &self,
        job: &NewJob,
        record: &JobRecord,
        with_json: bool,
        rate: Option<&RateCheck>,
    ) -> Result<i64, StoreError> {
        let fields = record.to_fields();
        let event = serde_json::to_string(&EventOf(&fields)).unwrap_or_default();
        let k = &self.keys;
        let status_key = k.status(job.id.as_str());
        let one_step = !self.conn.is_cluster();
        let mut conn = self.conn.clone();
        if !one_step {
            // The bucket is in another slot: counted on its own first.
            if let Some(check) = rate {
                let d = self
                    .rate_limit(&check.bucket, check.rate, check.burst)
                    .await?;
                check.decide(d);
                if !d.allowed {
                    return Ok(-5);
                }
            }
            let mut status = self.scripts.enqueue_status.prepare_invoke();
            status.key(&status_key).arg(self.ttl_secs());
            for (f, v) in &fields {
                status.arg(*f).arg(v);
            }
            let created: i64 = self.run(status.invoke_async(&mut conn)).await?;
            if created == 0 {
                return Ok(0);
            }
        }
        let script = if one_step {
            &self.scripts.enqueue
        } else {
            &self.scripts.enqueue_push
        };
        let mut push = script.prepare_invoke();
        for key in &self.push_keys[..PUSH_KEYS] {
            push.key(key);
        }
        push.arg(record.payload())
            .arg(job.id.as_str())
            .arg(self.settings.index_cap)
            .arg(self.settings.max_queued)
            .arg(&self.push_keys[PUSH_KEYS])
            .arg(event)
            .arg(k.tag())
            .arg(&job.owner)
            .arg(job.lane.max_queued.unwrap_or(0))
            .arg(job.lane.weight.max(1))
            .arg(job.lane.max_running.unwrap_or(0))
            .arg(job.following)
            .arg(&record.req)
            .arg(if with_json && !record.req.is_empty() {
                job.req_json.as_str()
            } else {
                ""
            })
            .arg(crate::store::MAX_REQUIREMENT_SETS)
            .arg(record.priority.as_str());
        if !one_step {
            let pushed = self.run(push.invoke_async::<i64>(&mut conn)).await;
            if !matches!(pushed, Ok(seq) if seq > 0) {
                // Nothing is queued: take the record back, best effort (the
                // caller's refusal means nobody will ask for this job).
                let _ = self
                    .run(
                        ::redis::cmd("DEL")
                            .arg(&status_key)
                            .query_async::<i64>(&mut conn),
                    )
                    .await;
            }
            return pushed;
        }
        push.key(&status_key).arg(self.ttl_secs());
        match rate {
            Some(check) => {
                push.key(k.rate_bucket(&check.bucket))
                    .arg(clock::now_ms())
                    .arg(1000.0 / check.rate)
                    .arg(check.burst);
            }
            None => {
                push.arg("").arg("").arg("");
            }
        }
        for (f, v) in &fields {
            push.arg(*f).arg(v);
        }
        let answer: Vec<i64> = self.run(push.invoke_async(&mut conn)).await?;
        if let (Some(check), [_, figures @ ..]) = (rate, answer.as_slice()) {
            check.decide(decision_of(figures));
        }
        Ok(answer.first().copied().unwrap_or(-1))
    }
}

#[async_trait]
impl JobQueue for RedisStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Redis
    }

    fn describe(&self) -> String {
        if self.keys.prefix().is_empty() {
            format!("redis at {}", self.url_for_logs)
        } else {
            format!(
                "redis at {} (key prefix {:?})",
                self.url_for_logs,
                self.keys.prefix()
            )
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let pong: String = self
            .run(::redis::cmd("PING").query_async(&mut conn))
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Internal(format!(
                "unexpected PING reply {pong:?}"
            )))
        }
    }

    async fn enqueue(&self, job: &NewJob) -> Result<JobRecord, StoreError> {
        let mut record = JobRecord::queued(job);
        record.rev = 1;
        let mut with_json = !self.sets_known.knows(&record.req);
        let mut answer = self
            .push(job, &record, with_json, job.rate.as_deref())
            .await?;
        for _ in 0..2 {
            match answer {
                // The set is not registered (the registry was emptied since this
                // process registered it): again, with its JSON.
                -4 if !with_json => with_json = true,
                // No room for a new set: the job goes to any backend.
                -3 => {
                    crate::store::warn_registry_full(&record.req);
                    record.req.clear();
                }
                _ => break,
            }
            // Counted once already.
            answer = self.push(job, &record, with_json, None).await?;
        }
        match answer {
            0 => return Ok(self.get(&job.id).await?.unwrap_or(record)),
            -5 => return Err(StoreError::Refused(Refusal::RateLimited)),
            -4 => {
                return Err(StoreError::Internal(format!(
                    "requirement set {} is not registered and came without its JSON",
                    record.req
                )));
            }
            -2 => {
                return Err(StoreError::Refused(Refusal::QuotaFull {
                    limit: job.lane.max_queued.unwrap_or(0),
                }));
            }
            seq if seq < 0 => {
                return Err(StoreError::Refused(Refusal::QueueFull {
                    limit: self.settings.max_queued,
                }));
            }
            _ => {}
        }
        self.sets_known.remember(&record.req);
        self.replicated().await?;
        tracing::info!(job_id = %job.id, workflow = %job.workflow, "job queued");
        Ok(record)
    }

    async fn get_many(&self, ids: &[String]) -> Result<Vec<Option<JobRecord>>, StoreError> {
        // Ids that could not name a hash read as absent, as the default does.
        let valid: Vec<&str> = ids
            .iter()
            .filter(|id| JobId::parse(id).is_ok())
            .map(String::as_str)
            .collect();
        let mut maps = self.status_hashes(valid.iter().copied()).await?.into_iter();
        Ok(ids
            .iter()
            .map(|id| match JobId::parse(id) {
                Ok(_) => maps.next().and_then(|m| record_from_map(id, m)),
                Err(_) => None,
            })
            .collect())
    }

    async fn get(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let map: HashMap<String, String> = self
            .run(
                ::redis::cmd("HGETALL")
                    .arg(self.keys.status(id.as_str()))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(record_from_map(id.as_str(), map))
    }

    async fn queue_position(&self, id: &JobId) -> Result<Option<u64>, StoreError> {
        let mut conn = self.conn.clone();
        let rank: Option<u64> = self
            .run(
                ::redis::cmd("ZRANK")
                    .arg(self.keys.pending())
                    .arg(id.as_str())
                    .query_async(&mut conn),
            )
            .await?;
        Ok(rank)
    }

    async fn status(&self, id: &JobId) -> Result<Option<(JobRecord, Option<u64>)>, StoreError> {
        // One round trip for both (a plain pipeline: the two need not be atomic).
        let mut conn = self.conn.clone();
        let (map, rank): (HashMap<String, String>, Option<u64>) = if self.conn.is_cluster() {
            // Two slots: two calls.
            let map = self
                .run(
                    ::redis::cmd("HGETALL")
                        .arg(self.keys.status(id.as_str()))
                        .query_async(&mut conn),
                )
                .await?;
            (map, self.queue_position(id).await?)
        } else {
            self.run(
                ::redis::pipe()
                    .cmd("HGETALL")
                    .arg(self.keys.status(id.as_str()))
                    .cmd("ZRANK")
                    .arg(self.keys.pending())
                    .arg(id.as_str())
                    .query_async(&mut conn),
            )
            .await?
        };
        Ok(record_from_map(id.as_str(), map).map(|job| {
            let position = (job.status == crate::job::JobStatus::Queued)
                .then_some(rank)
                .flatten();
            (job, position)
        }))
    }

    async fn status_counted(
        &self,
        id: &JobId,
        check: &RateCheck,
    ) -> Result<Option<(JobRecord, Option<u64>)>, StoreError> {
        if self.conn.is_cluster() {
            // Three slots: the limit, then the read.
            crate::store::count_apart(self, check).await?;
            return self.status(id).await;
        }
        // One round trip: the limit's script, then the reads (which are thrown
        // away if it refuses).
        let mut limit = self.scripts.gcra.prepare_invoke();
        limit
            .key(self.keys.rate_bucket(&check.bucket))
            .arg(clock::now_ms())
            .arg(1000.0 / check.rate)
            .arg(check.burst);
        let mut pipe = ::redis::pipe();
        pipe.invoke_script(&limit)
            .cmd("HGETALL")
            .arg(self.keys.status(id.as_str()))
            .cmd("ZRANK")
            .arg(self.keys.pending())
            .arg(id.as_str());
        let mut conn = self.conn.clone();
        type Read = (Vec<i64>, HashMap<String, String>, Option<u64>);
        let read: Result<Read, _> = self.run(pipe.query_async(&mut conn)).await;
        let (figures, map, rank) = match read {
            Err(StoreError::Internal(e)) if e.contains("NOSCRIPT") || e.contains("NoScript") => {
                // A Redis that restarted since: load it, and once more.
                self.run(limit.load_async(&mut conn)).await?;
                self.run(pipe.query_async::<Read>(&mut conn)).await?
            }
            other => other?,
        };
        let d = decision_of(&figures);
        check.decide(d);
        if !d.allowed {
            return Err(StoreError::Refused(Refusal::RateLimited));
        }
        Ok(record_from_map(id.as_str(), map).map(|job| {
            let position = (job.status == crate::job::JobStatus::Queued)
                .then_some(rank)
                .flatten();
            (job, position)
        }))
    }

    async fn list(&self, query: &ListQuery) -> Result<JobPage, StoreError> {
        // A filtered listing reads that status's index only, so it costs what it
        // returns however many jobs are in other states.
        let index = match (&query.owner, &query.status) {
            (Some(o), Some(s)) => self.keys.owner_status(o, s.as_str()),
            (Some(o), None) => self.keys.owner_index(o),
            (None, Some(s)) => self.keys.by_status(s.as_str()),
            (None, None) => self.keys.index(),
        };
        // Whose listing this is, to clean it when an entry has expired.
        let listed_owner = query.owner.as_deref().unwrap_or("");
        let limit = query.limit.max(1);
        let mut max = match query.cursor {
            Some(c) => format!("({c}"),
            None => "+inf".to_owned(),
        };
        let mut jobs = Vec::new();
        let mut scanned = 0;
        let mut conn = self.conn.clone();
        loop {
            // One more than needed tells whether there is a next page.
            let batch = limit - jobs.len() + 1;
            let entries: Vec<(String, f64)> = self
                .run(
                    ::redis::cmd("ZREVRANGEBYSCORE")
                        .arg(&index)
                        .arg(&max)
                        .arg("-inf")
                        .arg("WITHSCORES")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(batch)
                        .query_async(&mut conn),
                )
                .await?;
            let more = entries.len() == batch;
            let wanted = &entries[..entries.len().min(limit - jobs.len())];
            let maps = self
                .status_hashes(wanted.iter().map(|(id, _)| id.as_str()))
                .await?;
            let mut last_score = None;
            for ((id, score), map) in wanted.iter().zip(maps) {
                scanned += 1;
                last_score = Some(*score as u64);
                match record_from_map(id, map) {
                    // Expired: it leaves the listing.
                    None => self.relist(id, listed_owner, "gone", false).await?,
                    Some(job) => match &query.status {
                        // A stale index entry (a crash between a job's two
                        // scripts): list it where it belongs now.
                        Some(s) if *s != job.status => {
                            self.relist(id, &job.owner, job.status.as_str(), false)
                                .await?
                        }
                        _ => jobs.push(job),
                    },
                }
            }
            let next = last_score.filter(|_| more || wanted.len() < entries.len());
            if jobs.len() == limit || scanned >= LIST_SCAN_LIMIT || next.is_none() {
                return Ok(JobPage {
                    next_cursor: if jobs.len() == limit || scanned >= LIST_SCAN_LIMIT {
                        next
                    } else {
                        None
                    },
                    jobs,
                });
            }
            max = format!("({}", next.unwrap_or(0));
        }
    }

    async fn cancel(&self, id: &JobId) -> Result<CancelOutcome, StoreError> {
        let micros = clock::now_micros();
        let mut inv = self.scripts.cancel.prepare_invoke();
        inv.key(self.keys.status(id.as_str()))
            .arg(self.keys.events())
            .arg(clock::iso8601(micros))
            .arg(micros / 1000)
            .arg(self.ttl_secs());
        let mut conn = self.conn.clone();
        let reply: Vec<String> = self.run(inv.invoke_async(&mut conn)).await?;
        let outcome = reply.first().cloned().unwrap_or_default();
        if outcome == "missing" {
            return Ok(CancelOutcome::NotFound);
        }
        if outcome == "cancelled" {
            // Best effort: the queue entry is dropped at claim time anyway.
            let owner = reply.get(1).cloned().unwrap_or_default();
            let _ = self.relist(id.as_str(), &owner, "failed", true).await;
            tracing::info!(job_id = %id, "job failed: cancelled while queued");
        } else if outcome == "requested" {
            tracing::info!(job_id = %id, "cancel requested for running job");
        }
        self.replicated().await?;
        let Some(job) = self.get(id).await? else {
            return Ok(CancelOutcome::NotFound);
        };
        Ok(match outcome.as_str() {
            "final" => CancelOutcome::AlreadyFinal(job),
            "requested" => CancelOutcome::Requested(job),
            "cancelled" => CancelOutcome::Cancelled(job),
            other => {
                return Err(StoreError::Internal(format!(
                    "unexpected cancel reply {other:?}"
                )));
            }
        })
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        let k = &self.keys;
        let mut conn = self.conn.clone();
        // Waiting: the ownerless queue plus every key's lane.
        let (queued, in_lanes, processing, delayed, dead, workers): (
            u64,
            u64,
            u64,
            u64,
            u64,
            Vec<String>,
        ) = self
            .run(
                ::redis::pipe()
                    .cmd("LLEN")
                    .arg(k.queue())
                    .cmd("HLEN")
                    .arg(k.lane_entries())
                    .cmd("ZCARD")
                    .arg(k.by_status("processing"))
                    .cmd("ZCARD")
                    .arg(k.delayed())
                    .cmd("LLEN")
                    .arg(k.dead())
                    .cmd("SMEMBERS")
                    .arg(k.workers())
                    .query_async(&mut conn),
            )
            .await?;
        let mut live = 0;
        if !workers.is_empty() {
            let mut pipe = ::redis::pipe();
            for w in &workers {
                pipe.cmd("EXISTS").arg(k.heartbeat(w));
            }
            let alive: Vec<u64> = self.run(pipe.query_async(&mut conn)).await?;
            live = alive.iter().sum();
        }
        Ok(QueueStats {
            queued: queued + in_lanes,
            processing,
            delayed,
            dead,
            workers: live,
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.start_subscriber();
        self.events.subscribe()
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let mut conn = self.conn.clone();
        let raw: Vec<String> = self
            .run(
                ::redis::cmd("LRANGE")
                    .arg(self.keys.dead())
                    .arg(0)
                    .arg(limit.saturating_sub(1) as i64)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(raw
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect())
    }
}

impl RedisStore {
    /// The status hashes of `ids`, in order (empty for one that is gone): one
    /// pipelined round trip, or concurrent calls on a Cluster (each hash in its
    /// own slot).
    async fn status_hashes<'a>(
        &self,
        ids: impl Iterator<Item = &'a str>,
    ) -> Result<Vec<HashMap<String, String>>, StoreError> {
        let keys: Vec<String> = ids.map(|id| self.keys.status(id)).collect();
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if self.conn.is_cluster() {
            let calls = keys.into_iter().map(|key| {
                let mut c = self.conn.clone();
                async move { ::redis::cmd("HGETALL").arg(key).query_async(&mut c).await }
            });
            return self.run(futures_util::future::try_join_all(calls)).await;
        }
        let mut pipe = ::redis::pipe();
        for key in &keys {
            pipe.cmd("HGETALL").arg(key);
        }
        let mut conn = self.conn.clone();
        self.run(pipe.query_async(&mut conn)).await
    }
}
