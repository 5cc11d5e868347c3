//! Each deliberate bug makes a campaign fail quickly. (Its own test binary: the switches are
//! process-wide.)

#[test]
fn every_injected_bug_is_caught_within_a_few_seeds() {
    for bug in flotilla_sim::INJECTABLE_BUGS {
        flotilla_sim::inject_bug(Some(bug)).unwrap();
        let caught = (1..=40u64).find(|&seed| flotilla_sim::run_seed(seed, false).is_err());
        flotilla_sim::inject_bug(None).unwrap();
        assert!(caught.is_some(), "{bug} was not caught in 40 seeds");
        eprintln!("{bug}: caught by seed {}", caught.unwrap());
    }
    assert!(flotilla_sim::inject_bug(Some("nope")).is_err());
}
