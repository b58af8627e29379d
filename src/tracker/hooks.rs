//! Test hooks (feature `testing`, this repository's own tests only): monitor fault injection.

use super::Tracker;

impl Tracker {
    /// Sends a test hook's control message to the monitor thread (if it runs).
    #[cfg(feature = "testing")]
    pub(super) fn send_to_monitor(&self, msg: crate::backend::monitor::Control) {
        if let Some(m) = &self.monitor {
            m.send(msg);
        }
    }

    /// Test hook: makes the monitor thread panic, to exercise poisoning. Not part of the API.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn __panic_monitor_for_test(&self) {
        self.send_to_monitor(crate::backend::monitor::Control::PanicForTest);
    }

    /// Test hook: the monitor thread serves nothing for `d` (or until
    /// [`Tracker::__resume_monitor_for_test`]), so writers stay blocked in their faults. Returns
    /// once the pause has begun (`false` if it did not within 10 s). Not part of the API.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn __pause_monitor_for_test(&self, d: std::time::Duration) -> bool {
        let (begun, wait) = crossbeam_channel::bounded(1);
        self.send_to_monitor(crate::backend::monitor::Control::PauseForTest(d, begun));
        wait.recv_timeout(std::time::Duration::from_secs(10))
            .is_ok()
    }

    /// Test hook: the monitor thread fails (poisoning the tracker) right after it reads and
    /// applies its next batch of messages, before it un-protects that batch's faults. Not part of
    /// the API.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn __fail_monitor_after_next_batch_for_test(&self) {
        self.send_to_monitor(crate::backend::monitor::Control::FailAfterNextBatchForTest);
    }

    /// Test hook: ends a pause of the monitor thread early. Not part of the API.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn __resume_monitor_for_test(&self) {
        self.send_to_monitor(crate::backend::monitor::Control::ResumeForTest);
    }
}
