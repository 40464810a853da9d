//! MPI's world (the `mpi` feature): rsmpi's communicators behind the [`crate::Group`] calls.

use std::sync::Mutex;

use mpi::collective::SystemOperation;
use mpi::datatype::Equivalence;
use mpi::environment::{Threading, Universe};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use crate::Error;

/// Values per call of a reduction: the copy it needs (MPI's safe API has no in-place
/// reduction) stays at 16 MiB whatever the size of the data.
const REDUCE_CHUNK: usize = 4 << 20;

/// The world communicator and the one of this machine's ranks. MPI runs in
/// `MPI_THREAD_SERIALIZED` mode: any thread may call it, one at a time, which `lock` ensures.
pub(crate) struct MpiWorld {
    universe: Mutex<Option<Universe>>,
    world: SimpleCommunicator,
    local: SimpleCommunicator,
    lock: Mutex<()>,
}

// SAFETY: the communicators are handles into the MPI library, which was initialised for
// serialized use from any thread; every call through them holds `lock`.
unsafe impl Send for MpiWorld {}
unsafe impl Sync for MpiWorld {}

impl MpiWorld {
    pub(crate) fn join() -> Result<Self, Error> {
        let (universe, threading) =
            mpi::initialize_with_threading(Threading::Serialized).ok_or(Error::Init)?;
        if threading < Threading::Serialized {
            eprintln!(
                "warning: this MPI offers thread level {threading:?}; gnmt calls it from one \
                 thread at a time but not always the main one"
            );
        }
        let world = universe.world();
        let local = world.split_shared(world.rank());
        Ok(Self {
            universe: Mutex::new(Some(universe)),
            world,
            local,
            lock: Mutex::new(()),
        })
    }

    fn serialized(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn rank_and_size(&self) -> (usize, usize) {
        (self.world.rank() as usize, self.world.size() as usize)
    }

    pub(crate) fn local_rank_and_size(&self) -> (usize, usize) {
        (self.local.rank() as usize, self.local.size() as usize)
    }

    /// Sums `data` element-wise over the ranks, in place (f32 or f64).
    pub(crate) fn all_reduce_sum<T: Equivalence + Copy>(&self, data: &mut [T]) {
        let _g = self.serialized();
        for chunk in data.chunks_mut(REDUCE_CHUNK) {
            let send = chunk.to_vec();
            self.world
                .all_reduce_into(&send[..], chunk, SystemOperation::sum());
        }
    }

    pub(crate) fn all_gather(&self, value: u64) -> Vec<u64> {
        let _g = self.serialized();
        let mut all = vec![0u64; self.world.size() as usize];
        self.world.all_gather_into(&value, &mut all[..]);
        all
    }

    pub(crate) fn broadcast(&self, root: usize, bytes: &mut Vec<u8>) {
        let _g = self.serialized();
        let root = self.world.process_at_rank(root as i32);
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        bytes.resize(len as usize, 0);
        // Open MPI refuses a zero-length buffer (MPI_ERR_ARG).
        if len > 0 {
            root.broadcast_into(&mut bytes[..]);
        }
    }

    pub(crate) fn broadcast_f32(&self, root: usize, data: &mut [f32]) {
        let _g = self.serialized();
        let root = self.world.process_at_rank(root as i32);
        for chunk in data.chunks_mut(REDUCE_CHUNK) {
            root.broadcast_into(chunk);
        }
    }

    pub(crate) fn barrier(&self) {
        let _g = self.serialized();
        self.world.barrier();
    }

    /// Not behind `lock`: another thread may be inside a collective that will never end.
    pub(crate) fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    pub(crate) fn finalize(&self) {
        let _g = self.serialized();
        // Dropping the universe calls MPI_Finalize.
        drop(
            self.universe
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
    }
}
