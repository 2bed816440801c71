//! Memory planning for a compiled graph at a bound batch size (and sequence length): which
//! device buffer holds each intermediate value, so the engine allocates one arena per
//! batch-size bucket at load and nothing on the hot path.
//!
//! - **Specialisation**: symbols are bound and the graph folded again, so shape maths
//!   (Shape → Slice, Reshape targets) is done on the host and never takes a buffer.
//! - **Values planned**: node outputs that are not graph outputs. Graph inputs and outputs
//!   live in the instance's staging buffers, constants in the weight buffer.
//! - **Sizes**: elements × element size (FP16 outputs of the [`PrecisionPlan`] take 2 bytes),
//!   rounded up to [`ALIGN`] bytes.
//! - **Liveness**: value `v` is live over the steps `[def, last]`, `def` the index of the
//!   node that writes it and `last` the index of its last reader (`def` if none). A node's
//!   output never shares a buffer with its own inputs (no in-place kernels yet).
//! - **Assignment** (greedy, in execution order): buffers whose values are all dead are
//!   free; a value takes the smallest free buffer that fits (best fit), else grows the
//!   largest free buffer, else opens a new one. The arena is the sum of the buffer sizes.
//! - **Workspace**: none per operator. A fused [`Op::Attention`](super::ir::Op::Attention)
//!   keeps its `[B, H, Sq, Sk]` scores on chip (the contract of `docs/engine.md`); a
//!   lowering that materialises them would have to add that buffer here.

use std::collections::{HashMap, HashSet};

use super::fold::fold_constants;
use super::infer::bind_symbols;
use super::ir::{element_count, DType, Dim, Graph, ValueId};
use super::precision::PrecisionPlan;
use super::EngineError;

/// Buffer alignment in bytes (what cuBLASLt and vectorised kernels want, and more).
pub const ALIGN: usize = 256;

/// One planned value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub value: ValueId,
    /// Aligned size in bytes.
    pub bytes: usize,
    /// Index of the node that writes it.
    pub def: usize,
    /// Index of the last node that reads it (`def` when nothing does).
    pub last: usize,
    /// Index into [`MemoryPlan::buffers`].
    pub buffer: usize,
}

/// Where every intermediate value lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The nodes of the specialised graph (bound and folded), in execution order: what
    /// [`Allocation::def`] and [`Allocation::last`] index.
    pub nodes: Vec<String>,
    pub allocations: Vec<Allocation>,
    /// Buffer sizes in bytes (each a multiple of [`ALIGN`]).
    pub buffers: Vec<usize>,
}

impl MemoryPlan {
    /// Bytes of the activation arena: the sum of the buffers.
    pub fn peak_bytes(&self) -> usize {
        self.buffers.iter().sum()
    }

    /// Bytes without any reuse: the sum of all intermediates.
    pub fn unshared_bytes(&self) -> usize {
        self.allocations.iter().map(|a| a.bytes).sum()
    }

    /// The lower bound any assignment must reach: the most bytes live at one step.
    pub fn live_bound_bytes(&self) -> usize {
        let steps = self
            .allocations
            .iter()
            .map(|a| a.last + 1)
            .max()
            .unwrap_or(0);
        (0..steps)
            .map(|s| {
                self.allocations
                    .iter()
                    .filter(|a| a.def <= s && s <= a.last)
                    .map(|a| a.bytes)
                    .sum()
            })
            .max()
            .unwrap_or(0)
    }

    /// Checks that no two values live at the same time share a buffer, and that every value
    /// fits its buffer.
    pub fn check(&self) -> Result<(), String> {
        for a in &self.allocations {
            let size = self
                .buffers
                .get(a.buffer)
                .ok_or_else(|| format!("value {} is in missing buffer {}", a.value, a.buffer))?;
            if a.bytes > *size || a.bytes % ALIGN != 0 {
                return Err(format!(
                    "value {} ({} bytes) does not fit buffer {} ({size} bytes)",
                    a.value, a.bytes, a.buffer
                ));
            }
        }
        for (i, a) in self.allocations.iter().enumerate() {
            for b in &self.allocations[i + 1..] {
                if a.buffer == b.buffer && a.def <= b.last && b.def <= a.last {
                    return Err(format!(
                        "values {} [{}, {}] and {} [{}, {}] share buffer {} while both live",
                        a.value, a.def, a.last, b.value, b.def, b.last, a.buffer
                    ));
                }
            }
        }
        Ok(())
    }
}

fn element_size(dtype: DType, f16: bool) -> usize {
    match dtype {
        DType::F32 if f16 => 2,
        DType::F32 | DType::I32 => 4,
        DType::F64 | DType::I64 => 8,
        DType::Bool => 1,
    }
}

/// Plans `graph` with its symbols bound to `sizes` (`batch`, `sequence`); `precision` (made
/// for `graph`) marks the values stored as FP16. A copy is specialised first: symbols bound,
/// then constants folded, so the shape maths that depended on them disappears. Every
/// remaining intermediate shape must be concrete.
pub fn plan(
    graph: &Graph,
    sizes: &HashMap<String, usize>,
    precision: Option<&PrecisionPlan>,
) -> Result<MemoryPlan, EngineError> {
    // Value ids survive folding, so the FP16 choice is carried by output value.
    let f16_values: HashSet<ValueId> = precision
        .map(|p| {
            graph
                .nodes
                .iter()
                .zip(&p.nodes)
                .filter(|(_, p)| p.output_f16)
                .flat_map(|(n, _)| n.outputs.iter().copied())
                .collect()
        })
        .unwrap_or_default();
    let mut g = graph.clone();
    bind_symbols(&mut g, sizes)?;
    // Shape maths on now-known dims (Shape → Slice → Reshape targets) becomes constants,
    // evaluated on the host once per bucket, as the engine will do.
    // Each round can make more shapes known (Shape → Concat → Expand), so fold to a fixed
    // point; every round removes at least one node, so this ends.
    while fold_constants(&mut g)? > 0 {}
    g.remove_unused();
    let mut last_use: HashMap<ValueId, usize> = HashMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        for &v in &n.inputs {
            last_use.insert(v, i);
        }
    }
    let mut allocations = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        for &v in &n.outputs {
            let f16 = f16_values.contains(&v);
            if g.outputs.contains(&v) {
                continue;
            }
            let value = &g.values[v];
            let dims: Vec<usize> = value
                .shape
                .as_ref()
                .and_then(|s| {
                    s.iter()
                        .map(|d| match d {
                            Dim::Known(k) => Some(*k),
                            _ => None,
                        })
                        .collect()
                })
                .ok_or_else(|| {
                    EngineError::Model(format!(
                        "value '{}' of node '{}' has no concrete shape at these sizes ({})",
                        value.name,
                        n.name,
                        super::ir::shape_string(&value.shape)
                    ))
                })?;
            let count = element_count(&dims).map_err(EngineError::Model)?;
            let raw = count * element_size(value.dtype, f16);
            let bytes = raw.div_ceil(ALIGN).max(1) * ALIGN;
            allocations.push(Allocation {
                value: v,
                bytes,
                def: i,
                last: last_use.get(&v).copied().unwrap_or(i).max(i),
                buffer: usize::MAX,
            });
        }
    }
    // `busy_until[b]`: the last step at which buffer b's current value is read.
    let mut buffers: Vec<usize> = Vec::new();
    let mut busy_until: Vec<usize> = Vec::new();
    for a in &mut allocations {
        let free: Vec<usize> = (0..buffers.len())
            .filter(|&b| busy_until[b] < a.def)
            .collect();
        let best_fit = free
            .iter()
            .copied()
            .filter(|&b| buffers[b] >= a.bytes)
            .min_by_key(|&b| buffers[b]);
        let chosen = match best_fit {
            Some(b) => b,
            None => match free.iter().copied().max_by_key(|&b| buffers[b]) {
                Some(b) => {
                    buffers[b] = a.bytes;
                    b
                }
                None => {
                    buffers.push(a.bytes);
                    busy_until.push(0);
                    buffers.len() - 1
                }
            },
        };
        busy_until[chosen] = a.last;
        a.buffer = chosen;
    }
    Ok(MemoryPlan {
        nodes: g.nodes.iter().map(|n| n.name.clone()).collect(),
        allocations,
        buffers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ir::{Op, UnaryOp};

    /// A chain x → relu → relu → … (n nodes) over `[batch, 64]` f32.
    fn chain(n: usize) -> Graph {
        let mut g = Graph::default();
        let x = g.add_value(
            "x",
            DType::F32,
            Some(vec![Dim::Sym("batch".into()), Dim::Known(64)]),
        );
        g.inputs.push(x);
        let mut v = x;
        for i in 0..n {
            v = g
                .add_node(
                    format!("r{i}"),
                    Op::Unary(UnaryOp::Relu),
                    vec![v],
                    vec![format!("v{i}")],
                )
                .unwrap()[0];
        }
        g.outputs.push(v);
        g
    }

    fn batch(n: usize) -> HashMap<String, usize> {
        [("batch".to_string(), n)].into_iter().collect()
    }

    #[test]
    fn a_chain_ping_pongs_between_two_buffers() {
        let g = chain(6);
        let p = plan(&g, &batch(3), None).unwrap();
        p.check().unwrap();
        // 5 intermediates (the last node writes the graph output) of 3·64·4 = 768 bytes.
        assert_eq!(p.allocations.len(), 5);
        assert!(p.allocations.iter().all(|a| a.bytes == 768));
        assert_eq!(p.buffers, vec![768, 768]);
        assert_eq!(p.peak_bytes(), 1536);
        assert_eq!(p.live_bound_bytes(), 1536);
        assert_eq!(p.unshared_bytes(), 5 * 768);
    }

    #[test]
    fn sizes_are_aligned_and_a_long_lived_value_keeps_its_buffer() {
        // x → a; a → b; b → c; Add(a, c) → out: a stays live across b and c.
        let mut g = chain(0);
        let x = g.inputs[0];
        g.outputs.clear();
        let relu = |g: &mut Graph, name: &str, v| {
            g.add_node(
                name,
                Op::Unary(UnaryOp::Relu),
                vec![v],
                vec![format!("{name}_out")],
            )
            .unwrap()[0]
        };
        let a = relu(&mut g, "a", x);
        let b = relu(&mut g, "b", a);
        let c = relu(&mut g, "c", b);
        let out = g
            .add_node(
                "sum",
                Op::Binary(crate::engine::ir::BinaryOp::Add),
                vec![a, c],
                vec!["out".into()],
            )
            .unwrap()[0];
        g.outputs.push(out);
        let p = plan(&g, &batch(1), None).unwrap();
        p.check().unwrap();
        // 64 floats = 256 bytes exactly. a is live over [0, 3], b over [1, 2] and c over
        // [2, 3]: all three overlap at step 2, so three buffers.
        assert_eq!(p.buffers.len(), 3);
        assert!(p.allocations.iter().all(|a| a.bytes == 256));
        let p5 = plan(&g, &batch(5), None).unwrap();
        // 5·64·4 = 1280 bytes = 5 · 256.
        assert!(p5.allocations.iter().all(|a| a.bytes == 1280));
    }

    #[test]
    fn the_checker_catches_overlap() {
        let g = chain(4);
        let mut p = plan(&g, &batch(2), None).unwrap();
        p.check().unwrap();
        for a in &mut p.allocations {
            a.buffer = 0;
        }
        assert!(p.check().unwrap_err().contains("share buffer 0"));
    }

    #[test]
    fn unbound_symbols_are_an_error() {
        let g = chain(3);
        let err = plan(&g, &HashMap::new(), None).unwrap_err().to_string();
        assert!(err.contains("no concrete shape"), "{err}");
    }
}
