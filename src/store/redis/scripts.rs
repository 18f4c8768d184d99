//! The Lua scripts (`../lua/*.lua`), compiled once. Those that change a status hash
//! carry the prelude that raises its revision and publishes the change.

use ::redis::Script;

use crate::store::DeadLetter;

/// The compiled scripts. Those that change a status hash carry the prelude that
/// publishes the change.
pub(super) struct Scripts {
    /// A whole submission outside a Cluster: the status hash and the push.
    pub(super) enqueue: Script,
    pub(super) enqueue_status: Script,
    pub(super) enqueue_push: Script,
    pub(super) lease: Script,
    pub(super) update: Script,
    pub(super) complete: Script,
    pub(super) retry_status: Script,
    pub(super) release_status: Script,
    pub(super) requeue_status: Script,
    pub(super) cancel: Script,
    pub(super) settle: Script,
    pub(super) claim: Script,
    pub(super) relist: Script,
    pub(super) reap: Script,
    pub(super) promote: Script,
    pub(super) heartbeat: Script,
    pub(super) unlock: Script,
    pub(super) gcra: Script,
    pub(super) register: Script,
    pub(super) webhook_put: Script,
    pub(super) webhook_claim: Script,
    pub(super) webhook_settle: Script,
    pub(super) webhook_delete: Script,
    pub(super) webhook_wake: Script,
    pub(super) upload_usage: Script,
    pub(super) workflow_publish: Script,
    pub(super) workflow_retire: Script,
    pub(super) forget_file: Script,
    pub(super) usage_record: Script,
    pub(super) outputs_keep: Script,
    pub(super) outputs_forget: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let prelude = include_str!("../lua/prelude.lua");
        let publishing = |body: &str| Script::new(&format!("{prelude}\n{body}"));
        let queue_prelude = include_str!("../lua/queue_prelude.lua");
        // Scripts that change the queue and the listing's indexes.
        let requeueing = |body: &str| Script::new(&format!("{queue_prelude}\n{body}"));
        let push = include_str!("../lua/enqueue_push.lua");
        let gcra = include_str!("../lua/gcra.lua");
        let outbox_prelude = include_str!("../lua/webhook_out.lua");
        // Scripts that take entries out of the webhook outbox.
        let outbox = |body: &str| Script::new(&format!("{outbox_prelude}\n{body}"));
        Scripts {
            enqueue_status: Script::new(include_str!("../lua/enqueue_status.lua")),
            enqueue: requeueing(&format!(
                "{push}\n{gcra}\n{}",
                include_str!("../lua/enqueue.lua")
            )),
            enqueue_push: requeueing(&format!("{push}\nreturn push_job()")),
            lease: publishing(include_str!("../lua/lease.lua")),
            update: publishing(include_str!("../lua/update.lua")),
            complete: publishing(include_str!("../lua/complete.lua")),
            retry_status: publishing(include_str!("../lua/retry_status.lua")),
            release_status: publishing(include_str!("../lua/release_status.lua")),
            requeue_status: publishing(include_str!("../lua/requeue_status.lua")),
            cancel: publishing(include_str!("../lua/cancel.lua")),
            settle: requeueing(include_str!("../lua/settle.lua")),
            usage_record: Script::new(include_str!("../lua/usage_record.lua")),
            outputs_keep: Script::new(include_str!("../lua/outputs_keep.lua")),
            outputs_forget: Script::new(include_str!("../lua/outputs_forget.lua")),
            claim: requeueing(include_str!("../lua/claim.lua")),
            relist: requeueing(include_str!("../lua/relist.lua")),
            reap: requeueing(include_str!("../lua/reap.lua")),
            promote: requeueing(include_str!("../lua/promote.lua")),
            heartbeat: Script::new(include_str!("../lua/heartbeat.lua")),
            gcra: Script::new(&format!(
                "{gcra}\nreturn gcra(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))"
            )),
            // KEYS[1] the registry, ARGV[1] fingerprint, ARGV[2] JSON, ARGV[3] cap.
            register: Script::new(
                "if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 1 end \
                 if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end \
                 return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])",
            ),
            webhook_put: Script::new(include_str!("../lua/webhook_put.lua")),
            webhook_claim: outbox(include_str!("../lua/webhook_claim.lua")),
            webhook_settle: outbox(include_str!("../lua/webhook_settle.lua")),
            webhook_delete: outbox(
                "redis.call('DEL', KEYS[1]) out_of_outbox(KEYS[2], KEYS[3], ARGV[2], ARGV[1]) return 1",
            ),
            webhook_wake: Script::new(include_str!("../lua/webhook_wake.lua")),
            upload_usage: Script::new(include_str!("../lua/upload_usage.lua")),
            workflow_publish: Script::new(include_str!("../lua/workflow_publish.lua")),
            workflow_retire: Script::new(include_str!("../lua/workflow_retire.lua")),
            // KEYS[1] the upload files, ARGV[1] id, ARGV[2] before (ms): removed
            // only if no record has named it since.
            forget_file: Script::new(
                "local s = redis.call('ZSCORE', KEYS[1], ARGV[1]) \
                 if s and tonumber(s) < tonumber(ARGV[2]) then return redis.call('ZREM', KEYS[1], ARGV[1]) end \
                 return 0",
            ),
            unlock: Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            ),
        }
    }
}

/// The queue side of what happens to a claimed payload (`settle.lua`). `Drop` and
/// `Done` carry the job's status now, for the listing ('' when unknown: someone
/// else holds the job).
pub(super) enum Settle<'a> {
    Claimed,
    Drop(&'a str),
    Done(&'a str),
    Delay(u64),
    Dead(&'a DeadLetter),
    Release,
}
