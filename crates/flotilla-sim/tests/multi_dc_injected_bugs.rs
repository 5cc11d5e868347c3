//! Each deliberate bug of multi-leader merging makes a campaign fail. (Its own test binary: the
//! switches are process-wide.)

#[test]
fn a_merge_that_ignores_dependencies_is_caught() {
    flotilla_sim::inject_bug(Some("merge-ignores-dependencies")).unwrap();
    let caught =
        (1..=400u64).find(|&seed| flotilla_sim::multi_dc::run_multi_dc_seed(seed, false).is_err());
    flotilla_sim::inject_bug(None).unwrap();
    assert!(
        caught.is_some(),
        "merge-ignores-dependencies was not caught in 400 seeds"
    );
}
