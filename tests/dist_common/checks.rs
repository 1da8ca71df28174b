//! The collective checks shared by the MPI, world-of-one and NCCL tests: every `Comm`
//! operation on every kind the trainer uses, against its definition.
use grdr::dist::{Comm, ReduceOp};
use tch::{Device, Kind, Tensor};

fn full(shape: &[i64], v: f64, kind: Kind, device: Device) -> Tensor {
    Tensor::full(shape, v, (kind, device))
}

fn assert_all(t: &Tensor, v: f64, what: &str) {
    let got = t.to_device(Device::Cpu).to_kind(Kind::Double);
    let want = got.full_like(v);
    assert!(got.equal(&want), "{what}: got {got:?}, want all {v}");
}

/// Runs every collective on tensors of `device` and checks the results; panics (→ the job
/// aborts) on a mismatch.
pub fn check_collectives(comm: &dyn Comm, device: Device) {
    let w = comm.world();
    let (r, n) = (w.rank as f64, w.size as f64);
    assert!(w.local_rank < w.local_size && w.node == 0, "single node: {w:?}");

    for kind in [Kind::Float, Kind::Double, Kind::BFloat16, Kind::Int64] {
        let mut t = full(&[3, 2], r + 1.0, kind, device);
        comm.all_reduce_(&mut t, ReduceOp::Sum).unwrap();
        assert_all(&t, n * (n + 1.0) / 2.0, &format!("sum {kind:?}"));
        assert_eq!(t.kind(), kind);

        let mut t = full(&[5], r + 1.0, kind, device);
        comm.all_reduce_(&mut t, ReduceOp::Max).unwrap();
        assert_all(&t, n, &format!("max {kind:?}"));

        if kind != Kind::Int64 {
            let mut t = full(&[2, 2], 2.0 * (r + 1.0), kind, device);
            comm.all_reduce_(&mut t, ReduceOp::Mean).unwrap();
            assert_all(&t, n + 1.0, &format!("mean {kind:?}"));
        } else {
            let mut t = full(&[2], 1.0, kind, device);
            assert!(comm.all_reduce_(&mut t, ReduceOp::Mean).is_err(), "mean of i64 must be refused");
        }

        // all_reduce_into a separate receive buffer (DDP's path).
        let src = full(&[6], r + 1.0, kind, device);
        let mut dst = full(&[6], -7.0, kind, device);
        comm.all_reduce_into(&src, &mut dst, ReduceOp::Sum).unwrap();
        assert_all(&dst, n * (n + 1.0) / 2.0, &format!("sum into {kind:?}"));
        assert_all(&src, r + 1.0, &format!("source untouched {kind:?}"));
        if kind != Kind::Int64 {
            comm.all_reduce_into(&src, &mut dst, ReduceOp::Mean).unwrap();
            assert_all(&dst, (n + 1.0) / 2.0, &format!("mean into {kind:?}"));
        }

        // A non-contiguous view is reduced in place, through to its base tensor.
        let base = full(&[4, 3], r + 1.0, kind, device);
        let mut view = base.tr();
        comm.all_reduce_(&mut view, ReduceOp::Sum).unwrap();
        assert_all(&base, n * (n + 1.0) / 2.0, &format!("sum of a transposed view {kind:?}"));

        // all_gather: equal sizes, rank order.
        let local = (Tensor::arange(6, (Kind::Int64, device)).reshape([3, 2]) + 100 * w.rank as i64).to_kind(kind);
        let all = comm.all_gather(&local).unwrap();
        assert_eq!(all.size(), vec![3 * w.size as i64, 2]);
        for q in 0..w.size {
            let want = (Tensor::arange(6, (Kind::Int64, device)).reshape([3, 2]) + 100 * q as i64).to_kind(kind);
            assert!(all.narrow(0, 3 * q as i64, 3).equal(&want), "all_gather slot {q} {kind:?}");
        }

        // all_gather_varsize: rank q holds q+1 rows of value q.
        let local = full(&[w.rank as i64 + 1, 2], r, kind, device);
        let (all, sizes) = comm.all_gather_varsize(&local).unwrap();
        assert_eq!(sizes, (1..=w.size as i64).collect::<Vec<_>>());
        let mut at = 0;
        for q in 0..w.size as i64 {
            assert_all(&all.narrow(0, at, q + 1), q as f64, &format!("varsize slot {q} {kind:?}"));
            at += q + 1;
        }

        // broadcast from the last rank.
        let root = w.size - 1;
        let mut t = full(&[7], r, kind, device);
        comm.broadcast_(&mut t, root).unwrap();
        assert_all(&t, root as f64, &format!("broadcast {kind:?}"));

        // gather_to_root with variable rows.
        let local = full(&[w.rank as i64 + 1, 3], r + 10.0, kind, device);
        match comm.gather_to_root(&local, 0).unwrap() {
            Some(all) => {
                assert_eq!(w.rank, 0, "only the root receives");
                let rows: i64 = (1..=w.size as i64).sum();
                assert_eq!(all.size(), vec![rows, 3]);
                assert_all(&all.narrow(0, 0, 1), 10.0, "gather slot 0");
                assert_all(&all.narrow(0, rows - w.size as i64, w.size as i64), n - 1.0 + 10.0, "gather last slot");
            }
            None => assert_ne!(w.rank, 0),
        }
    }

    // Gathers of mismatching rows are refused on every rank (not a crash inside MPI).
    let bad = full(&[2, 2 + w.rank as i64], 0.0, Kind::Float, device);
    if w.size > 1 {
        assert!(comm.all_gather_varsize(&bad).is_err());
    }
    // all_gather refuses different dim-0 sizes.
    let uneven = full(&[1 + w.rank as i64, 2], 0.0, Kind::Float, device);
    if w.size > 1 {
        assert!(comm.all_gather(&uneven).is_err());
    }

    comm.barrier().unwrap();

    let mut f = [r, -r];
    comm.all_reduce_f64(&mut f, ReduceOp::Max).unwrap();
    assert_eq!(f, [n - 1.0, 0.0]);
    let mut i = [w.rank as i64 + 1];
    comm.all_reduce_i64(&mut i, ReduceOp::Sum).unwrap();
    assert_eq!(i[0], (w.size * (w.size + 1) / 2) as i64);
    let bytes = comm.all_gather_bytes(format!("rank{}", w.rank).repeat(w.rank + 1).as_bytes()).unwrap();
    for (q, b) in bytes.iter().enumerate() {
        assert_eq!(b, format!("rank{q}").repeat(q + 1).as_bytes());
    }
    let mut msg = if w.rank == 0 { b"from rank 0".to_vec() } else { Vec::new() };
    comm.broadcast_bytes(&mut msg, 0).unwrap();
    assert_eq!(msg, b"from rank 0");
    assert!(comm.collectives_issued() > 0 || w.size == 1);
}

/// A collective between two kernels on a large tensor, with no explicit synchronisation:
/// the result is right only if the collective is ordered after the kernel producing its
/// input and before the kernel consuming its output (the NCCL default-stream contract).
pub fn check_ordering(comm: &dyn Comm, device: Device) {
    let w = comm.world();
    let n = 1i64 << 22; // 16 MB of f32: kernels long enough to race if unordered
    for _ in 0..3 {
        let x = Tensor::arange(n, (Kind::Float, device)) * ((w.rank + 1) as f64 / n as f64);
        let mut y = (&x * 2.0).exp().log(); // two more kernels in flight before the reduce
        comm.all_reduce_(&mut y, ReduceOp::Sum).unwrap();
        let z = &y + 1.0;
        let scale = (w.size * (w.size + 1)) as f64 / n as f64; // Σ_r 2(r+1)/n
        let want = Tensor::arange(n, (Kind::Float, Device::Cpu)) * scale + 1.0;
        let got = z.to_device(Device::Cpu);
        let err = (&got - &want).abs().max().double_value(&[]);
        assert!(err < 1e-3, "collective not ordered with libtorch's kernels: max error {err}");
    }
}
