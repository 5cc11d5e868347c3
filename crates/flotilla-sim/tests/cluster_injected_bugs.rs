//! Each deliberate bug of a cluster member's host makes a campaign fail. (Its own test binary:
//! the switches are process-wide.)

#[test]
fn every_injected_cluster_bug_is_caught() {
    for bug in flotilla_sim::INJECTABLE_CLUSTER_BUGS {
        flotilla_sim::inject_bug(Some(bug)).unwrap();
        let caught = (1..=400u64)
            .find(|&seed| flotilla_sim::cluster::run_cluster_seed(seed, false).is_err());
        flotilla_sim::inject_bug(None).unwrap();
        assert!(caught.is_some(), "{bug} was not caught in 400 seeds");
        eprintln!("{bug}: caught by seed {}", caught.unwrap());
    }
}
