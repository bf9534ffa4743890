//! The Aho-Corasick automaton over all forms of an execution's values, built when a form
//! occurs in its output (or near-matches made direct searching cost as much).

use zeroize::{Zeroize, Zeroizing};

/// Aho-Corasick automaton over the forms that also knows, in each state, the longest end of
/// the input that could still begin a form: what a stream must hold back.
pub(super) struct Automaton {
    /// Transitions from the root, dense (0 is the root).
    pub(super) root: Box<[u32; 256]>,
    pub(super) nodes: Vec<Node>,
    edges: Vec<Edge>,
}

#[derive(Clone, Copy, Zeroize)]
pub(super) struct Node {
    /// First outgoing edge ([`NONE`] for a leaf); siblings are chained by `Edge::next`.
    first_edge: u32,
    /// Longest proper suffix of this node's string that is a node too.
    fail: u32,
    /// Length of this node's string.
    depth: u32,
    /// Longest form that ends here (the node's own or one along its fail chain); 0 for none.
    pub(super) longest_match: u32,
    /// Longest suffix of this node's string that is a proper prefix of some form.
    pub(super) hold: u32,
}

#[derive(Clone, Copy, Zeroize)]
pub(super) struct Edge {
    byte: u8,
    target: u32,
    next: u32,
}

const NONE: u32 = u32::MAX;
pub(super) const ROOT: u32 = 0;

impl Automaton {
    pub(super) fn new(forms: &[Zeroizing<Vec<u8>>]) -> Self {
        // At most one node and one edge per byte of the forms, allocated once: a vector that
        // grows frees its old buffer (the edges spell the forms) without zeroizing it.
        let total: usize = forms.iter().map(|f| f.len()).sum();
        let mut nodes = Vec::with_capacity(total.saturating_add(1));
        nodes.push(Node {
            first_edge: NONE,
            fail: ROOT,
            depth: 0,
            longest_match: 0,
            hold: 0,
        });
        let mut a = Self {
            root: Box::new([ROOT; 256]),
            nodes,
            edges: Vec::with_capacity(total),
        };
        for form in forms {
            let mut s = ROOT;
            for &b in form.iter() {
                s = match a.child(s, b) {
                    Some(t) => t,
                    None => a.add_child(s, b),
                };
            }
            let node = &mut a.nodes[s as usize];
            node.longest_match = node.depth;
        }
        // Breadth-first: a node's fail link is shallower, so already final.
        let mut queue = std::collections::VecDeque::new();
        queue.push_back(ROOT);
        while let Some(u) = queue.pop_front() {
            let mut e = a.nodes[u as usize].first_edge;
            while e != NONE {
                let Edge { byte, target, next } = a.edges[e as usize];
                let fail = if u == ROOT {
                    ROOT
                } else {
                    a.next(a.nodes[u as usize].fail, byte)
                };
                let f = a.nodes[fail as usize];
                let v = &mut a.nodes[target as usize];
                v.fail = fail;
                if v.longest_match == 0 {
                    v.longest_match = f.longest_match;
                }
                v.hold = if v.first_edge != NONE {
                    v.depth
                } else {
                    f.hold
                };
                queue.push_back(target);
                e = next;
            }
        }
        a
    }

    fn child(&self, s: u32, b: u8) -> Option<u32> {
        if s == ROOT {
            let t = self.root[usize::from(b)];
            return (t != ROOT).then_some(t);
        }
        let mut e = self.nodes[s as usize].first_edge;
        while e != NONE {
            let edge = &self.edges[e as usize];
            if edge.byte == b {
                return Some(edge.target);
            }
            e = edge.next;
        }
        None
    }

    fn add_child(&mut self, s: u32, b: u8) -> u32 {
        // Node and edge counts are bounded by the total length of the forms (a few copies of
        // the secrets), far below u32::MAX.
        let t = u32::try_from(self.nodes.len()).unwrap_or(NONE);
        let depth = self.nodes[s as usize].depth + 1;
        self.nodes.push(Node {
            first_edge: NONE,
            fail: ROOT,
            depth,
            longest_match: 0,
            hold: 0,
        });
        let e = u32::try_from(self.edges.len()).unwrap_or(NONE);
        let parent = &mut self.nodes[s as usize];
        self.edges.push(Edge {
            byte: b,
            target: t,
            next: parent.first_edge,
        });
        parent.first_edge = e;
        if s == ROOT {
            self.root[usize::from(b)] = t;
        }
        t
    }

    /// The state after reading `b` in state `s`.
    pub(super) fn next(&self, mut s: u32, b: u8) -> u32 {
        loop {
            if let Some(t) = self.child(s, b) {
                return t;
            }
            if s == ROOT {
                return ROOT;
            }
            s = self.nodes[s as usize].fail;
        }
    }
}

impl Drop for Automaton {
    fn drop(&mut self) {
        // The edges spell the forms.
        self.edges.zeroize();
        self.nodes.zeroize();
        (*self.root).zeroize();
    }
}
