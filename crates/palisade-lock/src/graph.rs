//! The lock-order graph: one node per lock class, an edge `A -> B` once some thread took `B`
//! while holding `A`. An edge that closes a cycle is reported (by the caller) and kept, so a
//! later, longer cycle through it is found as well.

use std::backtrace::Backtrace;
use std::collections::HashMap;
use std::panic::Location;

use palisade_core::sync::{Arc, Mutex};

/// Where an edge was first seen: the sites that took its two ends.
#[derive(Debug, Clone, Default)]
pub struct EdgeInfo {
    /// Where the thread took the lock it was holding (the edge's tail).
    pub from_site: Option<&'static Location<'static>>,
    /// Where it then took the other lock (the edge's head).
    pub to_site: Option<&'static Location<'static>>,
    /// The stack of that second acquisition, when backtraces are on.
    pub backtrace: Option<Arc<Backtrace>>,
}

/// What adding an edge did.
#[derive(Debug)]
pub enum Added {
    /// The edge was already in the graph.
    Present,
    /// The edge is new and closes no cycle; it is in the graph now.
    New,
    /// The edge is new and closed a cycle (it was added all the same). The path is the one that was already in the graph,
    /// from the new edge's head back to its tail (`to -> ... -> from`), with each edge's info;
    /// empty for a self-edge.
    Cycle(Vec<(u32, u32, EdgeInfo)>),
}

#[derive(Debug, Default)]
struct Inner {
    /// Successors of each class, indexed by class id.
    out: Vec<Vec<u32>>,
    edges: HashMap<(u32, u32), EdgeInfo>,
}

/// A lock-order graph shared by every thread. Edges are only ever added, under one lock that is
/// taken only when a thread takes a chain of classes it has not validated before, so the steady
/// state never touches it.
#[derive(Debug, Default)]
pub struct Graph {
    inner: Mutex<Inner>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `from -> to` unless it is present, and says whether it closed a cycle. `info` is
    /// called only when the edge is new. A self-edge (`from == to`) closes a cycle by itself: its
    /// path is empty, and it is not stored (a class is never ordered against itself).
    pub fn add_edge(&self, from: u32, to: u32, info: impl FnOnce() -> EdgeInfo) -> Added {
        if from == to {
            return Added::Cycle(Vec::new());
        }
        let mut inner = self.inner.lock();
        if inner.edges.contains_key(&(from, to)) {
            return Added::Present;
        }
        let cycle = inner.path(to, from).map(|path| {
            path.windows(2)
                .map(|w| (w[0], w[1], inner.edges[&(w[0], w[1])].clone()))
                .collect()
        });
        // Kept even when it closes a cycle: it is an order the program took, and a later cycle
        // through it (a third lock) must be found too. The caller reports each pair once.
        let needed = from.max(to) as usize + 1;
        if inner.out.len() < needed {
            inner.out.resize_with(needed, Vec::new);
        }
        inner.out[from as usize].push(to);
        inner.edges.insert((from, to), info());
        match cycle {
            Some(cycle) => Added::Cycle(cycle),
            None => Added::New,
        }
    }

    /// Whether `from -> to` is in the graph.
    pub fn has_edge(&self, from: u32, to: u32) -> bool {
        self.inner.lock().edges.contains_key(&(from, to))
    }

    /// Whether `to` can be reached from `from` by one or more edges.
    pub fn reaches(&self, from: u32, to: u32) -> bool {
        from != to && self.inner.lock().path(from, to).is_some()
    }

    /// How many edges the graph holds.
    pub fn edge_count(&self) -> usize {
        self.inner.lock().edges.len()
    }
}

impl Inner {
    /// A path `from -> ... -> to` of one or more edges (class ids, both ends included), by
    /// depth-first search; `from != to`.
    fn path(&self, from: u32, to: u32) -> Option<Vec<u32>> {
        let mut parent: HashMap<u32, u32> = HashMap::new();
        let mut stack = vec![from];
        while let Some(node) = stack.pop() {
            for &next in self.out.get(node as usize).map_or(&[][..], Vec::as_slice) {
                if next == from || parent.contains_key(&next) {
                    continue;
                }
                parent.insert(next, node);
                if next == to {
                    let mut path = vec![to];
                    let mut at = to;
                    while at != from {
                        at = parent[&at];
                        path.push(at);
                    }
                    path.reverse();
                    return Some(path);
                }
                stack.push(next);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_the_edge_that_closes_a_cycle_and_names_the_path() {
        let g = Graph::new();
        assert!(matches!(g.add_edge(1, 2, EdgeInfo::default), Added::New));
        assert!(matches!(g.add_edge(2, 3, EdgeInfo::default), Added::New));
        assert!(matches!(
            g.add_edge(1, 2, EdgeInfo::default),
            Added::Present
        ));
        match g.add_edge(3, 1, EdgeInfo::default) {
            Added::Cycle(path) => {
                let hops: Vec<_> = path.iter().map(|&(a, b, _)| (a, b)).collect();
                assert_eq!(hops, [(1, 2), (2, 3)]);
            }
            other => panic!("expected a cycle, got {other:?}"),
        }
        assert!(
            g.has_edge(3, 1),
            "kept, so longer cycles through it are found"
        );
        assert!(matches!(
            g.add_edge(3, 1, EdgeInfo::default),
            Added::Present
        ));
        assert!(matches!(g.add_edge(1, 4, EdgeInfo::default), Added::New));
        assert!(
            matches!(g.add_edge(4, 2, EdgeInfo::default), Added::Cycle(_)),
            "2 -> 3 -> 1 -> 4 -> 2"
        );
        assert_eq!(g.edge_count(), 5);
    }

    #[test]
    fn a_self_edge_is_a_cycle() {
        let g = Graph::new();
        assert!(matches!(g.add_edge(4, 4, EdgeInfo::default), Added::Cycle(p) if p.is_empty()));
        assert_eq!(g.edge_count(), 0);
    }
}
