//! The JSON-pointer trie: pointer segments (a key, an array index or `*`) and a trie
//! over them that is walked alongside a JSON tree, so that matching a body against many
//! ignore or mask rules costs one step per key whatever the number of rules.

use std::collections::HashMap;

/// A JSON pointer segment: a key (or array index) or `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Segment {
    /// A key or an array index.
    Key(String),
    /// `*`: any key or index.
    Any,
}

/// A trie over pointer segments, walked alongside the JSON tree: a set of current nodes
/// advances by each key, so the cost does not grow with the number of rules.
#[derive(Clone, Debug)]
pub(super) struct PointerTrie {
    nodes: Vec<TrieNode>,
}

#[derive(Clone, Debug, Default)]
struct TrieNode {
    children: HashMap<String, usize>,
    any: Option<usize>,
    /// Rule ids ending here.
    terminals: Vec<usize>,
}

impl Default for PointerTrie {
    fn default() -> Self {
        Self {
            nodes: vec![TrieNode::default()],
        }
    }
}

impl PointerTrie {
    pub(super) const ROOT: usize = 0;

    pub(super) fn insert(&mut self, segments: &[Segment], rule: usize) {
        let mut node = Self::ROOT;
        for segment in segments {
            let next = match segment {
                Segment::Key(key) => self.nodes[node].children.get(key).copied(),
                Segment::Any => self.nodes[node].any,
            };
            node = if let Some(next) = next {
                next
            } else {
                let id = self.nodes.len();
                self.nodes.push(TrieNode::default());
                match segment {
                    Segment::Key(key) => {
                        self.nodes[node].children.insert(key.clone(), id);
                    }
                    Segment::Any => self.nodes[node].any = Some(id),
                }
                id
            };
        }
        self.nodes[node].terminals.push(rule);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.nodes.len() == 1 && self.nodes[Self::ROOT].terminals.is_empty()
    }

    /// The states after `key`, given the states before.
    pub(super) fn advance(&self, states: &[usize], key: &str) -> Vec<usize> {
        let mut next = Vec::new();
        for &state in states {
            let node = &self.nodes[state];
            if let Some(&child) = node.children.get(key) {
                next.push(child);
            }
            if let Some(any) = node.any {
                next.push(any);
            }
        }
        next
    }

    pub(super) fn terminals<'a>(&'a self, states: &'a [usize]) -> impl Iterator<Item = usize> + 'a {
        states
            .iter()
            .flat_map(|&s| self.nodes[s].terminals.iter().copied())
    }
}
