//! Every Redis key and channel name Studio Core uses, in one place.
//!
//! With an empty prefix these are exactly the prototype's names (`job_queue`,
//! `job:status:<id>`) plus the reliable extensions of DESIGN.md §4, all tagged
//! `{job_queue}` so that they hash to the same Redis Cluster slot as `job_queue`.
//! A prefix (`--redis-prefix`) lets several studios, or parallel tests, share one Redis.

/// The statuses the listing indexes, in the order the scripts take their keys.
pub const LISTED_STATUSES: [&str; 4] = ["queued", "processing", "finished", "failed"];

/// Key names for one prefix.
#[derive(Clone, Debug)]
pub struct KeyNames {
    prefix: String,
    tag: String,
}

impl KeyNames {
    pub fn new(prefix: &str) -> Self {
        KeyNames {
            prefix: prefix.to_owned(),
            tag: format!("{{{prefix}job_queue}}"),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The hash tag every queue key shares (`{job_queue}`, with the prefix inside),
    /// for scripts that name an owner's keys themselves.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// An owner's own listing: its job ids → sequence numbers.
    pub fn owner_index(&self, owner: &str) -> String {
        format!("{}:owner:{owner}:index", self.tag)
    }

    /// An owner's jobs in one status.
    pub fn owner_status(&self, owner: &str, status: &str) -> String {
        format!("{}:owner:{owner}:status:{status}", self.tag)
    }

    /// The prototype's queue: producers `LPUSH`, consumers take from the right.
    pub fn queue(&self) -> String {
        format!("{}job_queue", self.prefix)
    }

    /// The prototype's status hash of one job.
    pub fn status(&self, job_id: &str) -> String {
        format!("{}job:status:{job_id}", self.prefix)
    }

    /// A worker's in-flight list (`BLMOVE` destination).
    pub fn processing(&self, worker: &str) -> String {
        format!("{}:processing:{worker}", self.tag)
    }

    /// A worker's heartbeat (a string with a TTL).
    pub fn heartbeat(&self, worker: &str) -> String {
        format!("{}:hb:{worker}", self.tag)
    }

    /// The set of registered workers, so the reaper needs no `SCAN`.
    pub fn workers(&self) -> String {
        format!("{}:workers", self.tag)
    }

    /// Delayed retries: payload → due time (ms).
    pub fn delayed(&self) -> String {
        format!("{}:delayed", self.tag)
    }

    /// Dead letters (JSON), newest first, capped.
    /// What is paused: `*` (the farm) or a backend → since when (ms).
    pub fn paused(&self) -> String {
        format!("{}:paused", self.tag)
    }

    pub fn dead(&self) -> String {
        format!("{}:dead", self.tag)
    }

    /// Recent jobs for listing: job id → sequence number.
    pub fn index(&self) -> String {
        format!("{}:index", self.tag)
    }

    /// Recent jobs in one status (`queued`, `processing`, `finished`, `failed`),
    /// scored like `index`: a listing filtered by status reads only these.
    pub fn by_status(&self, status: &str) -> String {
        format!("{}:status:{status}", self.tag)
    }

    /// The four status indexes, in the order the scripts take them.
    pub fn status_indexes(&self) -> [String; 4] {
        LISTED_STATUSES.map(|s| self.by_status(s))
    }

    /// Queued jobs in queue order, for `queue_position` by `ZRANK`.
    pub fn pending(&self) -> String {
        format!("{}:pending", self.tag)
    }

    /// The sequence counter behind `index` and `pending`.
    pub fn seq(&self) -> String {
        format!("{}:seq", self.tag)
    }

    /// Held by the one process reaping at a time.
    pub fn reaper_lock(&self) -> String {
        format!("{}:reaper-lock", self.tag)
    }

    /// Every API key: key id → the key as JSON.
    pub fn api_keys(&self) -> String {
        format!("{}studio:keys", self.prefix)
    }

    /// The secret that signs image URLs.
    pub fn server_secret(&self) -> String {
        format!("{}studio:secret", self.prefix)
    }

    /// An owner's `Idempotency-Key` (hashed): `fingerprint job_id`, with a TTL.
    pub fn idempotency(&self, scope: &str) -> String {
        format!("{}studio:idem:{scope}", self.prefix)
    }

    /// A backend offer (capabilities JSON) by its fingerprint, with a TTL.
    pub fn capabilities(&self, fp: &str) -> String {
        format!("{}studio:caps:{fp}", self.prefix)
    }

    /// An uploaded image's record (JSON, with a TTL), per owner.
    pub fn upload(&self, owner: &str, id: &str) -> String {
        format!("{}studio:upload:{owner}:{id}", self.prefix)
    }

    /// Published workflows: name → `<latest version> <retired 0|1>`.
    pub fn workflows(&self) -> String {
        format!("{}:workflows", self.tag)
    }

    /// One published workflow's versions: version → definition.
    pub fn workflow_versions(&self, name: &str) -> String {
        format!("{}:workflow:{name}", self.tag)
    }

    /// Raised by every publish and retirement.
    pub fn workflows_generation(&self) -> String {
        format!("{}:workflows-gen", self.tag)
    }

    /// The outbox's owners: job id → the key whose webhook it is.
    pub fn webhook_owners(&self) -> String {
        format!("{}:webhook-owners", self.tag)
    }

    /// The prefix of each owner's set of webhooks in the outbox (the owner's id
    /// follows; "" for none).
    pub fn webhooks_of(&self, owner: &str) -> String {
        format!("{}:webhooks-of:{owner}", self.tag)
    }

    /// An owner's live uploads: (ZSET id → expiry ms, HASH id → size), in a slot
    /// of their own (the owner's tag), for the quota.
    pub fn upload_usage(&self, owner: &str) -> (String, String) {
        let base = format!("{}studio:uploads:{{o:{owner}}}", self.prefix);
        (format!("{base}:exp"), format!("{base}:size"))
    }

    /// Stored upload files (content-addressed, shared by owners) → until when a
    /// record names them (ms).
    pub fn upload_files(&self) -> String {
        format!("{}:upload-files", self.tag)
    }

    /// A rate limit's bucket (GCRA's theoretical arrival time).
    pub fn rate_bucket(&self, bucket: &str) -> String {
        format!("{}studio:rate:{bucket}", self.prefix)
    }

    /// Owners with jobs waiting, by virtual time: a claim serves the lowest.
    pub fn lanes(&self) -> String {
        format!("{}:lanes", self.tag)
    }

    /// The queue entries of jobs waiting in owners' lanes: job id → entry.
    pub fn lane_entries(&self) -> String {
        format!("{}:lane-entries", self.tag)
    }

    /// Per owner: the virtual time its lane reached.
    pub fn lane_vt(&self) -> String {
        format!("{}:lane-vt", self.tag)
    }

    /// Per owner: its weight.
    pub fn lane_weight(&self) -> String {
        format!("{}:lane-weight", self.tag)
    }

    /// Per owner: its cap on running jobs (0: none).
    pub fn lane_cap(&self) -> String {
        format!("{}:lane-cap", self.tag)
    }

    /// Per owner ("" for `job_queue`): jobs it has running.
    pub fn running(&self) -> String {
        format!("{}:running", self.tag)
    }

    /// Each worker's last report on its backends: worker → `<ms> <json>`.
    pub fn backend_reports(&self) -> String {
        format!("{}:backend-reports", self.tag)
    }

    /// Owners with jobs waiting that are at their cap on running jobs.
    pub fn blocked(&self) -> String {
        format!("{}:blocked", self.tag)
    }

    /// The virtual time: the start of the lane served last.
    pub fn vtime(&self) -> String {
        format!("{}:vtime", self.tag)
    }

    /// The registered requirement sets: fingerprint → JSON (in the queue's slot,
    /// as a claim reads its size).
    pub fn requirement_sets(&self) -> String {
        format!("{}:req-sets", self.tag)
    }

    /// Jobs with stored outputs, by when they may be deleted (ms).
    pub fn outputs(&self) -> String {
        format!("{}:outputs", self.tag)
    }

    /// Each such job's files, owner and bytes (JSON).
    pub fn output_files(&self) -> String {
        format!("{}:output-files", self.tag)
    }

    /// Bytes of outputs stored per owner.
    pub fn stored(&self) -> String {
        format!("{}:stored", self.tag)
    }

    /// One UTC day's usage accounts: `job:attempt` → JSON.
    pub fn usage_day(&self, day: &str) -> String {
        format!("{}:usage:{day}", self.tag)
    }

    /// One key's spend: `d:<day>` and `m:<month>` → GPU ms.
    pub fn spend(&self, owner: &str) -> String {
        format!("{}:spend:{owner}", self.tag)
    }

    /// A batch's record (JSON): its owner and its jobs.
    pub fn batch(&self, id: &str) -> String {
        format!("{}studio:batch:{id}", self.prefix)
    }

    /// A job's latest preview: a hash of `seq`, `type`, `image`.
    pub fn preview(&self, job_id: &str) -> String {
        format!("{}studio:preview:{job_id}", self.prefix)
    }

    /// A job's webhook: a hash of `rec` (the record as JSON) and `lease` (ms
    /// since the epoch until which a worker holds it).
    pub fn webhook(&self, job_id: &str) -> String {
        format!("{}:webhook:{job_id}", self.tag)
    }

    /// The webhook outbox: job ids by when their webhook is due (ms since the epoch).
    pub fn webhooks(&self) -> String {
        format!("{}:webhooks", self.tag)
    }

    /// The keys the lane scripts take, in their order (`lane_keys` in Lua).
    pub fn lane_keys(&self) -> [String; 8] {
        [
            self.lanes(),
            self.lane_entries(),
            self.lane_vt(),
            self.lane_weight(),
            self.lane_cap(),
            self.running(),
            self.blocked(),
            self.vtime(),
        ]
    }

    /// The keys `settle.lua` takes, in its order, for a worker's payload.
    pub fn settle_keys(&self, worker: &str) -> Vec<String> {
        let mut keys = vec![
            self.processing(worker),
            self.pending(),
            self.index(),
            self.seq(),
            self.delayed(),
            self.dead(),
            self.queue(),
        ];
        keys.extend(self.status_indexes());
        keys.extend(self.lane_keys());
        keys
    }

    /// The pub/sub channel every status change is published on.
    pub fn events(&self) -> String {
        format!("{}job:events", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_prefix_gives_the_prototype_names() {
        let k = KeyNames::new("");
        assert_eq!(k.queue(), "job_queue");
        assert_eq!(k.status("abc"), "job:status:abc");
        assert_eq!(k.processing("w1"), "{job_queue}:processing:w1");
        assert_eq!(k.heartbeat("w1"), "{job_queue}:hb:w1");
        assert_eq!(k.events(), "job:events");
    }

    /// Redis Cluster's key slot: CRC16 (XMODEM) of the hash tag, mod 16384.
    fn slot(key: &str) -> u16 {
        let b = key.as_bytes();
        let hashed = match b.iter().position(|&c| c == b'{') {
            Some(s) => match b[s + 1..].iter().position(|&c| c == b'}') {
                Some(len) if len > 0 => &b[s + 1..s + 1 + len],
                _ => b,
            },
            None => b,
        };
        let mut crc: u16 = 0;
        for &byte in hashed {
            crc ^= (byte as u16) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc % 16384
    }

    #[test]
    fn queue_keys_share_the_slot_of_job_queue() {
        // 6010 is the slot measured on a real cluster (research/queue-anchors.md §2.6).
        assert_eq!(slot("job_queue"), 6010);
        for prefix in ["", "studio1:"] {
            let k = KeyNames::new(prefix);
            let s = slot(&k.queue());
            for key in [
                k.processing("w"),
                k.heartbeat("w"),
                k.workers(),
                k.delayed(),
                k.dead(),
                k.index(),
                k.pending(),
                k.seq(),
                k.reaper_lock(),
                k.by_status("failed"),
                k.owner_index("0123456789ab"),
                k.lanes(),
                k.lane_entries(),
                k.running(),
                k.vtime(),
                k.owner_status("0123456789ab", "queued"),
            ] {
                assert_eq!(slot(&key), s, "{key}");
            }
        }
        assert_eq!(slot("job:status:j1"), 14166);
    }
}
