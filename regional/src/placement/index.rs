//! The static view of the cluster for one solve.
//!
//! Owns the dense numbering of nodes (position in [`NodeId`] order, so
//! "lowest index" is "lowest id"), the numbering of zones and racks, and the
//! grouping of nodes into label classes: nodes with the same labels and GPU
//! model are interchangeable for constraints, so a constraint set is evaluated
//! once per class instead of once per node. [`Filters`] holds those verdicts
//! per distinct (constraints, GPU type) of the pending tasks.
//!
//! Must never: change during a solve. Everything that moves as tasks are bound
//! lives in `state`.

use std::collections::{BTreeMap, HashMap};

use super::types::{LabelConstraint, Node, NodeId, Resources, Snapshot};

/// Resources as the solver does arithmetic on them; the GPU model is handled
/// by label classes and filters instead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Amount {
    pub cpu: u64,
    pub mem: u64,
    pub gpus: u64,
}

impl Amount {
    pub fn of(r: &Resources) -> Self {
        Amount {
            cpu: r.cpu_millis,
            mem: r.memory_bytes,
            gpus: u64::from(r.gpus),
        }
    }

    pub fn plus(self, o: Amount) -> Amount {
        Amount {
            cpu: self.cpu.saturating_add(o.cpu),
            mem: self.mem.saturating_add(o.mem),
            gpus: self.gpus.saturating_add(o.gpus),
        }
    }

    pub fn minus(self, o: Amount) -> Amount {
        Amount {
            cpu: self.cpu.saturating_sub(o.cpu),
            mem: self.mem.saturating_sub(o.mem),
            gpus: self.gpus.saturating_sub(o.gpus),
        }
    }

    pub fn per_dim_max(self, o: Amount) -> Amount {
        Amount {
            cpu: self.cpu.max(o.cpu),
            mem: self.mem.max(o.mem),
            gpus: self.gpus.max(o.gpus),
        }
    }

    /// Every dimension of `self` is at most the one of `o`.
    pub fn within(self, o: Amount) -> bool {
        self.cpu <= o.cpu && self.mem <= o.mem && self.gpus <= o.gpus
    }

    pub fn is_zero(self) -> bool {
        self.cpu == 0 && self.mem == 0 && self.gpus == 0
    }
}

/// The zone and rack of a node: what numbers its rack.
type RackKey<'a> = (Option<&'a str>, Option<&'a str>);

pub(crate) struct ClusterIndex<'a> {
    pub ids: Vec<&'a NodeId>,
    pub nodes: Vec<&'a Node>,
    pub capacity: Vec<Amount>,
    pub zone_of: Vec<u32>,
    pub rack_of: Vec<u32>,
    /// The zone each rack belongs to.
    pub rack_zone: Vec<u32>,
    pub zones: usize,
    pub racks: usize,
    pub class_of: Vec<u32>,
    /// One node of each class, to read the class's labels and GPU model from.
    pub class_representative: Vec<u32>,
    /// The schedulable nodes of each rack, grouped by class, in index order.
    pub rack_classes: Vec<Vec<(u32, Vec<u32>)>>,
    pub by_id: BTreeMap<&'a NodeId, u32>,
    /// Capacity of the schedulable nodes: the denominator of fair shares.
    pub schedulable_capacity: Amount,
}

impl<'a> ClusterIndex<'a> {
    pub fn new(snapshot: &'a Snapshot) -> Self {
        let n = snapshot.nodes.len();
        let mut ix = ClusterIndex {
            ids: Vec::with_capacity(n),
            nodes: Vec::with_capacity(n),
            capacity: Vec::with_capacity(n),
            zone_of: Vec::with_capacity(n),
            rack_of: Vec::with_capacity(n),
            rack_zone: Vec::new(),
            zones: 0,
            racks: 0,
            class_of: Vec::with_capacity(n),
            class_representative: Vec::new(),
            rack_classes: Vec::new(),
            by_id: BTreeMap::new(),
            schedulable_capacity: Amount::default(),
        };
        let mut zones: BTreeMap<Option<&str>, u32> = BTreeMap::new();
        let mut racks: BTreeMap<RackKey<'a>, u32> = BTreeMap::new();
        type ClassKey<'k> = (&'k BTreeMap<String, String>, Option<&'k str>);
        let mut classes: BTreeMap<ClassKey<'a>, u32> = BTreeMap::new();
        // Number domains and classes in sorted order of their keys rather than
        // first appearance, so the numbering does not depend on node names.
        for node in snapshot.nodes.values() {
            zones.entry(node.zone.as_deref()).or_insert(0);
            racks
                .entry((node.zone.as_deref(), node.rack.as_deref()))
                .or_insert(0);
            classes
                .entry((&node.labels, node.capacity.gpu_type.as_deref()))
                .or_insert(0);
        }
        for (i, v) in zones.values_mut().enumerate() {
            *v = i as u32;
        }
        for (i, v) in racks.values_mut().enumerate() {
            *v = i as u32;
        }
        for (i, v) in classes.values_mut().enumerate() {
            *v = i as u32;
        }
        ix.zones = zones.len();
        ix.racks = racks.len();
        ix.rack_zone = racks.keys().map(|(zone, _)| zones[zone]).collect();
        ix.class_representative = vec![0; classes.len()];
        let mut per_rack: Vec<BTreeMap<u32, Vec<u32>>> = vec![BTreeMap::new(); racks.len()];
        for (i, (id, node)) in snapshot.nodes.iter().enumerate() {
            let i = i as u32;
            let zone = zones[&node.zone.as_deref()];
            let rack = racks[&(node.zone.as_deref(), node.rack.as_deref())];
            let class = classes[&(&node.labels, node.capacity.gpu_type.as_deref())];
            let capacity = Amount::of(&node.capacity);
            ix.ids.push(id);
            ix.nodes.push(node);
            ix.capacity.push(capacity);
            ix.zone_of.push(zone);
            ix.rack_of.push(rack);
            ix.class_of.push(class);
            ix.class_representative[class as usize] = i;
            ix.by_id.insert(id, i);
            if node.schedulable {
                ix.schedulable_capacity = ix.schedulable_capacity.plus(capacity);
                per_rack[rack as usize].entry(class).or_default().push(i);
            }
        }
        ix.rack_classes = per_rack
            .into_iter()
            .map(|m| m.into_iter().collect())
            .collect();
        ix
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }
}

/// Why a class of nodes is unfit for a filter, checked in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Verdict {
    Fits,
    Constraint,
    GpuType,
}

/// What a task demands of a node's labels and GPU model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct FilterKey<'a> {
    pub constraints: &'a [LabelConstraint],
    /// Only set when the task asks for at least one GPU.
    pub gpu_type: Option<&'a str>,
}

/// Verdicts of each distinct filter of the pending tasks on each class.
pub(crate) struct Filters<'a> {
    /// Looked up once per pending task and never iterated: ids come from
    /// first use, in pending order, which is itself deterministic.
    ids: HashMap<FilterKey<'a>, u32>,
    verdicts: Vec<Vec<Verdict>>,
    /// Racks holding at least one schedulable node that passes the filter.
    racks: Vec<Vec<u32>>,
}

impl<'a> Filters<'a> {
    pub fn new() -> Self {
        Filters {
            ids: HashMap::new(),
            verdicts: Vec::new(),
            racks: Vec::new(),
        }
    }

    /// The id of `key`, evaluating it on every class the first time.
    pub fn intern(&mut self, ix: &ClusterIndex<'_>, key: FilterKey<'a>) -> u32 {
        if let Some(&id) = self.ids.get(&key) {
            return id;
        }
        let id = self.verdicts.len() as u32;
        let verdicts: Vec<Verdict> = ix
            .class_representative
            .iter()
            .map(|&rep| {
                let node = ix.nodes[rep as usize];
                if !key.constraints.iter().all(|c| c.matches(&node.labels)) {
                    Verdict::Constraint
                } else if key
                    .gpu_type
                    .is_some_and(|t| node.capacity.gpu_type.as_deref() != Some(t))
                {
                    Verdict::GpuType
                } else {
                    Verdict::Fits
                }
            })
            .collect();
        let racks = ix
            .rack_classes
            .iter()
            .enumerate()
            .filter(|(_, classes)| {
                classes
                    .iter()
                    .any(|(c, _)| verdicts[*c as usize] == Verdict::Fits)
            })
            .map(|(r, _)| r as u32)
            .collect();
        self.verdicts.push(verdicts);
        self.racks.push(racks);
        self.ids.insert(key, id);
        id
    }

    pub fn verdict(&self, filter: u32, class: u32) -> Verdict {
        self.verdicts[filter as usize][class as usize]
    }

    pub fn racks(&self, filter: u32) -> &[u32] {
        &self.racks[filter as usize]
    }
}
