//! The embedded file descriptor set, as gRPC reflection will serve it.

use std::collections::{BTreeMap, BTreeSet};

use meridian_proto::FILE_DESCRIPTOR_SET;
use meridian_proto::v1::{
    agent_link_server, agent_logs_server, federation_server, region_admin_server,
    region_link_server,
};
use prost::Message;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorProto, FileDescriptorSet};

fn descriptor_set() -> FileDescriptorSet {
    FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("FILE_DESCRIPTOR_SET decodes")
}

/// Fully qualified service name -> rpc names, in declaration order.
fn services(set: &FileDescriptorSet) -> BTreeMap<String, Vec<String>> {
    set.file
        .iter()
        .flat_map(|file| {
            file.service.iter().map(move |service| {
                (
                    format!("{}.{}", file.package(), service.name()),
                    service.method.iter().map(|m| m.name().to_owned()).collect(),
                )
            })
        })
        .collect()
}

#[test]
fn the_file_descriptor_set_decodes_and_lists_every_service_with_its_rpcs() {
    let services = services(&descriptor_set());
    let expected: BTreeMap<String, Vec<String>> = [
        (
            "meridian.v1.Federation",
            &[
                "SubmitJob",
                "SubmitJobs",
                "GetJob",
                "ListJobs",
                "CancelJob",
                "HoldJob",
                "ReleaseJob",
                "SetJobPriority",
                "WatchJobs",
                "ListJobTasks",
                "GetTaskLogs",
                "FollowTaskLogs",
                "ListRegions",
                "DrainRegion",
                "UndrainRegion",
                "ListNodes",
                "CordonNode",
                "UncordonNode",
                "DrainNode",
                "CreateSchedule",
                "GetSchedule",
                "ListSchedules",
                "PauseSchedule",
                "ResumeSchedule",
                "DeleteSchedule",
                "GetUsage",
                "CreateToken",
                "ListTokens",
                "RevokeToken",
                "ListAuditRecords",
            ][..],
        ),
        (
            "meridian.v1.RegionLink",
            &[
                "RegisterRegion",
                "RenewRegionLease",
                "Assignments",
                "AckAssignments",
                "ReportStatus",
                "ReportCapacity",
                "ReleaseJobs",
                "CheckConsoleToken",
            ][..],
        ),
        (
            "meridian.v1.AgentLink",
            &[
                "Register",
                "Assignments",
                "ReportTaskStatus",
                "Heartbeat",
                "HeartbeatNodes",
                "ReportNodes",
                "RegisterNodes",
                "HostAssignments",
            ][..],
        ),
        (
            "meridian.v1.RegionAdmin",
            &[
                "ListNodes",
                "CordonNode",
                "UncordonNode",
                "DrainNode",
                "GetTaskLogs",
                "FollowTaskLogs",
                "ListJobTasks",
            ][..],
        ),
        ("meridian.v1.AgentLogs", &["FollowTaskLogs"][..]),
    ]
    .into_iter()
    .map(|(name, rpcs)| {
        (
            name.to_owned(),
            rpcs.iter().map(|r| (*r).to_owned()).collect(),
        )
    })
    .collect();
    assert_eq!(services, expected);
}

#[test]
fn generated_servers_use_the_service_names_of_the_descriptor_set() {
    let services = services(&descriptor_set());
    for name in [
        federation_server::SERVICE_NAME,
        region_link_server::SERVICE_NAME,
        agent_link_server::SERVICE_NAME,
        region_admin_server::SERVICE_NAME,
        agent_logs_server::SERVICE_NAME,
    ] {
        assert!(
            services.contains_key(name),
            "{name} missing from descriptor set"
        );
    }
}

#[test]
fn streaming_rpcs_are_server_streams_and_only_host_assignments_streams_both_ways() {
    let set = descriptor_set();
    let mut streaming = BTreeSet::new();
    let mut from_clients = BTreeSet::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                let name = format!("{}.{}", service.name(), method.name());
                if method.client_streaming() {
                    assert!(
                        method.server_streaming(),
                        "{name} streams only from the client"
                    );
                    from_clients.insert(name.clone());
                }
                if method.server_streaming() {
                    streaming.insert(name);
                }
            }
        }
    }
    let expected: BTreeSet<String> = [
        "AgentLink.Assignments",
        "AgentLink.HostAssignments",
        "AgentLogs.FollowTaskLogs",
        "Federation.FollowTaskLogs",
        "Federation.WatchJobs",
        "RegionAdmin.FollowTaskLogs",
        "RegionLink.Assignments",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(streaming, expected);
    assert_eq!(
        from_clients,
        BTreeSet::from(["AgentLink.HostAssignments".to_owned()])
    );
}

#[test]
fn every_file_is_self_contained_in_package_meridian_v1() {
    let set = descriptor_set();
    assert!(!set.file.is_empty());
    for file in &set.file {
        assert_eq!(file.package(), "meridian.v1", "{}", file.name());
        assert_eq!(file.syntax(), "proto3", "{}", file.name());
        assert!(file.name().starts_with("meridian/v1/"), "{}", file.name());
    }
}

// Field numbers of descriptor.proto used in source-code-info paths.
const FILE_MESSAGE: i32 = 4;
const FILE_ENUM: i32 = 5;
const FILE_SERVICE: i32 = 6;
const MESSAGE_FIELD: i32 = 2;
const MESSAGE_NESTED: i32 = 3;
const MESSAGE_ENUM: i32 = 4;
const MESSAGE_ONEOF: i32 = 8;
const ENUM_VALUE: i32 = 2;
const SERVICE_METHOD: i32 = 2;

/// Collects (path, human name) of every element that must be documented.
fn walk_message(
    message: &DescriptorProto,
    path: Vec<i32>,
    name: String,
    out: &mut Vec<(Vec<i32>, String)>,
) {
    out.push((path.clone(), name.clone()));
    let child = |kind: i32, i: usize| {
        let mut p = path.clone();
        p.extend([kind, i32::try_from(i).expect("small index")]);
        p
    };
    for (i, field) in message.field.iter().enumerate() {
        out.push((child(MESSAGE_FIELD, i), format!("{name}.{}", field.name())));
    }
    for (i, oneof) in message.oneof_decl.iter().enumerate() {
        // `optional` fields live in synthetic oneofs that cannot carry comments.
        let synthetic = message.field.iter().any(|f| {
            f.proto3_optional() && f.oneof_index.and_then(|o| usize::try_from(o).ok()) == Some(i)
        });
        if !synthetic {
            out.push((child(MESSAGE_ONEOF, i), format!("{name}.{}", oneof.name())));
        }
    }
    for (i, nested) in message.nested_type.iter().enumerate() {
        // Map entries are synthetic messages that cannot carry comments.
        if nested.options.as_ref().and_then(|o| o.map_entry) == Some(true) {
            continue;
        }
        walk_message(
            nested,
            child(MESSAGE_NESTED, i),
            format!("{name}.{}", nested.name()),
            out,
        );
    }
    for (i, nested) in message.enum_type.iter().enumerate() {
        walk_enum(
            nested,
            child(MESSAGE_ENUM, i),
            format!("{name}.{}", nested.name()),
            out,
        );
    }
}

fn walk_enum(
    enumeration: &EnumDescriptorProto,
    path: Vec<i32>,
    name: String,
    out: &mut Vec<(Vec<i32>, String)>,
) {
    for (i, value) in enumeration.value.iter().enumerate() {
        let mut p = path.clone();
        p.extend([ENUM_VALUE, i32::try_from(i).expect("small index")]);
        out.push((p, format!("{name}.{}", value.name())));
    }
    out.push((path, name));
}

fn elements(file: &FileDescriptorProto) -> Vec<(Vec<i32>, String)> {
    let mut out = Vec::new();
    let index = |i: usize| i32::try_from(i).expect("small index");
    for (i, message) in file.message_type.iter().enumerate() {
        walk_message(
            message,
            vec![FILE_MESSAGE, index(i)],
            message.name().to_owned(),
            &mut out,
        );
    }
    for (i, enumeration) in file.enum_type.iter().enumerate() {
        walk_enum(
            enumeration,
            vec![FILE_ENUM, index(i)],
            enumeration.name().to_owned(),
            &mut out,
        );
    }
    for (i, service) in file.service.iter().enumerate() {
        out.push((vec![FILE_SERVICE, index(i)], service.name().to_owned()));
        for (j, method) in service.method.iter().enumerate() {
            out.push((
                vec![FILE_SERVICE, index(i), SERVICE_METHOD, index(j)],
                format!("{}.{}", service.name(), method.name()),
            ));
        }
    }
    out
}

#[test]
fn every_message_field_enum_value_and_rpc_carries_a_comment() {
    let set = descriptor_set();
    let mut undocumented = Vec::new();
    for file in &set.file {
        let info = file
            .source_code_info
            .as_ref()
            .unwrap_or_else(|| panic!("{} has no source info", file.name()));
        let documented: BTreeSet<&[i32]> = info
            .location
            .iter()
            .filter(|l| l.leading_comments().trim().len() > 3)
            .map(|l| l.path.as_slice())
            .collect();
        for (path, name) in elements(file) {
            if !documented.contains(path.as_slice()) {
                undocumented.push(format!("{}: {name}", file.name()));
            }
        }
    }
    assert!(undocumented.is_empty(), "undocumented: {undocumented:#?}");
}
