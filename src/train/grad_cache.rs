//! GradCache (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
//! Limited Setup"). A contrastive loss couples every example of the batch, so gradient
//! accumulation cannot split it; GradCache splits the encoder pass instead:
//!
//! ```text
//! 1. reps[side] = encode(chunk) for every chunk, no graph         (B_side, d), graph leaves
//! 2. loss(reps) ; backward                                          → ∂L/∂reps, cached
//! 3. per chunk: (encode(chunk) · ∂L/∂reps[chunk]).sum() ; backward  → ∂L/∂θ accumulates
//! ```
//! By the chain rule step 3 sums to the whole batch's ∂L/∂θ, while only one chunk's
//! activations are ever held. A chunk's two passes draw the same dropout masks: its torch
//! seed is set from a key before each. Each chunk is narrowed to its longest row (rows
//! ordered by length first when `length_sorted`): padding columns change no embedding.
use tch::{Kind, Tensor};

use crate::error::Result;

/// Rows of each chunk of a `(B, L)` mask and the chunk's longest row: consecutive runs of
/// at most `chunk` rows, in length order when `length_sorted`, else in batch order.
fn plan(mask: &Tensor, chunk: usize, length_sorted: bool) -> Vec<(Vec<i64>, i64)> {
    let lengths: Vec<i64> =
        Vec::try_from(mask.sum_dim_intlist(1, false, Kind::Int64).to_device(tch::Device::Cpu)).expect("a (B, L) mask");
    let mut order: Vec<i64> = (0..lengths.len() as i64).collect();
    if length_sorted {
        order.sort_by_key(|&r| lengths[r as usize]); // stable: ties keep batch order
    }
    order
        .chunks(chunk)
        .map(|rows| (rows.to_vec(), rows.iter().map(|&r| lengths[r as usize]).max().unwrap_or(0).max(1)))
        .collect()
}

/// One side of the batch (queries, documents): `ids (B, L)` and `mask (B, L)`.
pub struct Side<'a> {
    pub ids: &'a Tensor,
    pub mask: &'a Tensor,
}

/// Forward and backward of `loss_of(reps)` scaled by `scale`, each side encoded by `encode`
/// in chunks of `chunk` rows (module doc). `seed(side, chunk)` is the torch seed of a
/// chunk's two passes. Returns the loss, detached.
pub fn forward_backward(
    sides: &[Side],
    chunk: usize,
    length_sorted: bool,
    encode: impl Fn(&Tensor, &Tensor) -> Tensor,
    seed: impl Fn(usize, usize) -> i64,
    loss_of: impl FnOnce(&[Tensor]) -> Result<Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let plans: Vec<_> = sides.iter().map(|s| plan(s.mask, chunk, length_sorted)).collect();
    let run_chunk = |side: usize, c: usize| {
        let (rows, len) = &plans[side][c];
        let rows = Tensor::from_slice(rows).to_device(sides[side].ids.device());
        tch::manual_seed(seed(side, c));
        encode(
            &sides[side].ids.index_select(0, &rows).narrow(1, 0, *len),
            &sides[side].mask.index_select(0, &rows).narrow(1, 0, *len),
        )
    };

    // 1. Representations without a graph, back in batch order, as leaves of step 2's graph.
    //    A side may have no rows here (a rank whose shard of the corpus is empty): its
    //    leaf is a (0, …) tensor shaped as the other sides'.
    let reps: Vec<Option<Tensor>> = tch::no_grad(|| {
        (0..sides.len())
            .map(|side| {
                let parts: Vec<Tensor> = (0..plans[side].len()).map(|c| run_chunk(side, c)).collect();
                if parts.is_empty() {
                    return None;
                }
                let mut position = vec![0i64; sides[side].ids.size()[0] as usize]; // row → place in `parts`
                for (at, &r) in plans[side].iter().flat_map(|(rows, _)| rows).enumerate() {
                    position[r as usize] = at as i64;
                }
                let position = Tensor::from_slice(&position).to_device(sides[side].ids.device());
                Some(Tensor::cat(&parts, 0).index_select(0, &position).detach().set_requires_grad(true))
            })
            .collect()
    });
    let like = reps.iter().flatten().next().expect("a batch has rows on some side").narrow(0, 0, 0);
    let reps: Vec<Tensor> =
        reps.into_iter().map(|r| r.unwrap_or_else(|| like.detach().copy().set_requires_grad(true))).collect();

    // 2. The loss of the whole batch and its gradient with respect to each representation.
    let loss = loss_of(&reps)?;
    (&loss * scale).backward();

    // 3. Each chunk again, with its graph: its representations' cached gradient flows on
    //    into the parameters.
    for (side, rep) in reps.iter().enumerate() {
        let grad = rep.grad(); // (B_side, d)
        for (c, (rows, _)) in plans[side].iter().enumerate() {
            let rows = Tensor::from_slice(rows).to_device(grad.device());
            let out = run_chunk(side, c); // (b, d)
            let kind = out.kind();
            (out * grad.index_select(0, &rows).to_kind(kind)).sum(Kind::Float).backward();
        }
    }
    Ok(loss.detach())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_row_once_and_narrow_to_their_longest() {
        // Lengths 3, 1, 4, 2, 5 (masks of width 5).
        let mask = Tensor::from_slice2(&[
            [1i64, 1, 1, 0, 0],
            [1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 1, 1],
        ]);
        assert_eq!(plan(&mask, 2, true), vec![(vec![1, 3], 2), (vec![0, 2], 4), (vec![4], 5)]);
        assert_eq!(plan(&mask, 2, false), vec![(vec![0, 1], 3), (vec![2, 3], 4), (vec![4], 5)]);
        assert_eq!(plan(&mask, 9, false), vec![((0..5).collect(), 5)]);
    }

    /// The parameter gradient through chunks equals the plain one: a linear "encoder" of
    /// masked mean inputs and a softmax coupling every row.
    #[test]
    fn chunked_gradient_equals_the_whole_batch_gradient() {
        tch::manual_seed(0);
        let w = Tensor::randn([6, 4], (Kind::Double, tch::Device::Cpu)).set_requires_grad(true);
        let ids = Tensor::randint(6, [7, 5], (Kind::Int64, tch::Device::Cpu));
        let mask = Tensor::from_slice2(&[[1i64, 1, 1, 0, 0]; 7]);
        let encode = |ids: &Tensor, mask: &Tensor| {
            let x = w.index_select(0, &ids.reshape([-1])).view([ids.size()[0], ids.size()[1], 4]);
            let m = mask.to_kind(Kind::Double).unsqueeze(-1);
            (x * &m).sum_dim_intlist(1, false, Kind::Double) / m.sum_dim_intlist(1, false, Kind::Double)
        };
        let loss_of = |q: &Tensor, d: &Tensor| {
            let scores = q.matmul(&d.tr()).log_softmax(-1, Kind::Double);
            -scores.diagonal(0, 0, 1).mean(Kind::Double)
        };
        let plain = loss_of(&encode(&ids, &mask), &encode(&ids.flip([0]), &mask));
        plain.backward();
        let expected = w.grad().copy();
        let _ = w.grad().zero_();
        let flipped = ids.flip([0]);
        let sides = [Side { ids: &ids, mask: &mask }, Side { ids: &flipped, mask: &mask }];
        let loss =
            forward_backward(&sides, 3, true, encode, |s, c| (s * 10 + c) as i64, |r| Ok(loss_of(&r[0], &r[1])), 1.0)
                .unwrap();
        assert!((loss.double_value(&[]) - plain.double_value(&[])).abs() < 1e-12);
        let diff = (w.grad() - expected).abs().max().double_value(&[]);
        assert!(diff < 1e-12, "chunked vs whole-batch gradient: {diff:e}");
    }

    /// A side without rows (a rank whose shard of the corpus is empty) is a (0, d) leaf.
    #[test]
    fn a_side_without_rows_is_an_empty_leaf() {
        let w = Tensor::ones([4, 3], (Kind::Double, tch::Device::Cpu)).set_requires_grad(true);
        let encode = |ids: &Tensor, _: &Tensor| w.index_select(0, &ids.select(1, 0)); // (b, 3)
        let (ids, mask) = (Tensor::from_slice2(&[[1i64], [2]]), Tensor::ones([2, 1], (Kind::Int64, tch::Device::Cpu)));
        let empty = Tensor::zeros([0, 1], (Kind::Int64, tch::Device::Cpu));
        let sides = [Side { ids: &ids, mask: &mask }, Side { ids: &empty, mask: &empty }];
        let loss = forward_backward(
            &sides,
            2,
            false,
            encode,
            |_, _| 0,
            |r| {
                assert_eq!((r[0].size(), r[1].size()), (vec![2, 3], vec![0, 3]));
                Ok(Tensor::cat(&[&r[0], &r[1]], 0).sum(Kind::Double))
            },
            1.0,
        )
        .unwrap();
        assert_eq!(loss.double_value(&[]), 6.0);
        assert_eq!(w.grad().sum(Kind::Double).double_value(&[]), 6.0);
    }
}
