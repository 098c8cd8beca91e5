//! proto3 enums are open: values this build does not know must survive.

use meridian_proto::v1::{ItemResult, Job, JobState, Verdict};
use prost::Message;

#[test]
fn an_unknown_enum_value_decodes_without_panic_and_is_preserved() {
    let job = Job {
        job_id: "j".to_owned(),
        state: 42,
        ..Default::default()
    };
    let decoded = Job::decode(job.encode_to_vec().as_slice()).expect("decodes");

    assert_eq!(decoded.state, 42, "the raw value is kept");
    assert_eq!(
        decoded.state(),
        JobState::Unspecified,
        "the typed getter falls back to the default"
    );
    assert!(JobState::try_from(decoded.state).is_err());
    assert_eq!(
        decoded.encode_to_vec(),
        job.encode_to_vec(),
        "re-encoding keeps it"
    );
}

#[test]
fn an_unknown_verdict_from_a_newer_peer_reads_as_unspecified() {
    // ItemResult { verdict: 99 } written by hand: field 1, varint 99.
    let bytes = [0x08, 99];
    let result = ItemResult::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(result.verdict, 99);
    assert_eq!(result.verdict(), Verdict::Unspecified);
}

#[test]
fn a_negative_enum_value_decodes_without_panic() {
    let job = Job {
        state: -1,
        ..Default::default()
    };
    let decoded = Job::decode(job.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(decoded.state, -1);
    assert_eq!(decoded.state(), JobState::Unspecified);
}
