//! The core contract on private anonymous memory, in both modes.

mod common;
use common::{tracker, Region};

per_mode! {
    fn populated_and_untouched_pages(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        let mut r = Region::anon(64);
        for i in 0..32 { r.write(i, 0, 1); } // populate half
        let id = t.register(r.ptr(), r.len).unwrap();
        r.rebase();
        assert!(t.collect().unwrap().is_empty(), "nothing written since register");
        for i in [0, 5, 31, 32, 40, 63] { r.touch(i); } // populated and never-touched pages
        let d = t.collect().unwrap();
        assert_eq!(r.check(&d, true), (6, 6));
        assert!(t.collect().unwrap().is_empty(), "collect resets");
        t.unregister(id).unwrap();
    }
}

per_mode! {
    fn reads_are_not_reported(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        let mut r = Region::anon(32);
        for i in 0..16 { r.write(i, 0, 7); }
        t.register(r.ptr(), r.len).unwrap();
        r.rebase();
        let mut sum = 0u32;
        for i in 0..32 { sum += r.read(i, 100) as u32; }
        assert_eq!(sum, 0);
        let d = t.collect().unwrap();
        assert_eq!(r.check(&d, true), (0, 0));
    }
}

per_mode! {
    fn peek_is_non_destructive_and_clear_resets(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        let mut r = Region::anon(16);
        t.register(r.ptr(), r.len).unwrap();
        r.rebase();
        r.touch(3);
        r.touch(4);
        let s1 = t.peek().unwrap();
        let s2 = t.peek().unwrap();
        assert_eq!(s1, s2);
        assert_eq!(s1.len(), 2);
        r.touch(9);
        let d = t.collect().unwrap();
        assert_eq!(r.check(&d, true), (3, 3));
        r.touch(1);
        t.clear().unwrap();
        r.rebase();
        r.touch(2);
        let d = t.collect().unwrap();
        assert_eq!(r.check(&d, true), (1, 1), "the clear forgot page 1, page 2 is new");
    }
}

#[test]
fn auto_mode_picks_what_the_capabilities_say() {
    let t = match dirtytrack::Tracker::new() {
        Ok(t) => t,
        Err(e) => return common::skip(&format!("no mode available: {e}")),
    };
    // The kernel matrix reads this line for its "mode chosen" column.
    eprintln!("DIRTYTRACK-MODE: auto -> {:?}", t.mode());
    assert_eq!(t.capabilities().auto_mode().unwrap(), t.mode());
    assert_ne!(t.mode(), dirtytrack::Mode::Auto);
}
