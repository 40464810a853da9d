//! The process group a command runs in: one process, or the ranks of a job that an MPI
//! launcher (`mpirun`, `srun`) started.
//!
//! [`init`] is called once at the start of `main`. Without a launcher, or when the launcher
//! started a single process, the group is [`Group::single`] and every collective is a no-op,
//! so the rest of the program reads the same either way. Under a launcher with several
//! processes, a build with the `mpi` feature joins MPI's world; a build without it refuses
//! (each process would otherwise train alone and they would overwrite each other's files).
//!
//! Collectives are blocking and must be called by every rank in the same order. A rank that
//! fails calls [`Group::abort`], which ends the whole job (MPI_Abort) instead of leaving the
//! others waiting in a collective.

mod launcher;
#[cfg(feature = "mpi")]
mod mpi_world;

use std::sync::OnceLock;

pub use launcher::Launch;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{launcher} started {size} processes, but this gnmt was built without the `mpi` feature, \
         so each would run alone and overwrite the others' files; rebuild with \
         `cargo build --release --features mpi` (needs Open MPI and libclang), or run one process"
    )]
    NotBuiltWithMpi { launcher: &'static str, size: usize },
    #[error(
        "the launcher says this is rank {rank} of {size}, but MPI says {mpi_rank} of {mpi_size}"
    )]
    Disagree {
        rank: usize,
        size: usize,
        mpi_rank: usize,
        mpi_size: usize,
    },
    #[error("MPI could not be initialised (it may already have been)")]
    Init,
}

/// Where this process stands among the processes of its job.
pub struct Group {
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
    #[cfg(feature = "mpi")]
    mpi: Option<mpi_world::MpiWorld>,
}

static WORLD: OnceLock<Group> = OnceLock::new();

/// Joins the job the launcher started (or none): call once at the start of `main`, before any
/// thread is spawned. Later calls return the same group.
pub fn init() -> Result<&'static Group, Error> {
    if let Some(g) = WORLD.get() {
        return Ok(g);
    }
    let group = Group::from_launch(Launch::from_env())?;
    Ok(WORLD.get_or_init(|| group))
}

/// The group [`init`] joined; a single process when it was not called.
pub fn world() -> &'static Group {
    WORLD.get_or_init(Group::single)
}

/// A job of one process, for work that never runs distributed (studies, tests).
pub fn alone() -> &'static Group {
    static ALONE: OnceLock<Group> = OnceLock::new();
    ALONE.get_or_init(Group::single)
}

/// Leaves MPI (MPI_Finalize) when the process joined it. Call at the end of `main`, on success;
/// after an error, [`Group::abort`] ends the job instead.
pub fn finalize() {
    #[cfg(feature = "mpi")]
    if let Some(g) = WORLD.get() {
        if let Some(m) = &g.mpi {
            m.finalize();
        }
    }
}

impl Group {
    /// A job of one process.
    pub fn single() -> Self {
        Self {
            rank: 0,
            size: 1,
            local_rank: 0,
            local_size: 1,
            #[cfg(feature = "mpi")]
            mpi: None,
        }
    }

    fn from_launch(launch: Option<Launch>) -> Result<Self, Error> {
        let Some(launch) = launch.filter(|l| l.size > 1) else {
            return Ok(Self::single());
        };
        #[cfg(feature = "mpi")]
        {
            let mpi = mpi_world::MpiWorld::join()?;
            let (rank, size) = mpi.rank_and_size();
            if (rank, size) != (launch.rank, launch.size) {
                return Err(Error::Disagree {
                    rank: launch.rank,
                    size: launch.size,
                    mpi_rank: rank,
                    mpi_size: size,
                });
            }
            let (local_rank, local_size) = mpi.local_rank_and_size();
            Ok(Self {
                rank,
                size,
                local_rank,
                local_size,
                mpi: Some(mpi),
            })
        }
        #[cfg(not(feature = "mpi"))]
        Err(Error::NotBuiltWithMpi {
            launcher: launch.launcher,
            size: launch.size,
        })
    }

    /// This process's rank, from 0.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of processes in the job.
    pub fn size(&self) -> usize {
        self.size
    }

    /// This process's rank among those on the same machine (it chooses the GPU).
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// The number of the job's processes on this machine (they share its cores).
    pub fn local_size(&self) -> usize {
        self.local_size
    }

    /// Whether this is rank 0, the one that writes the job's files.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// Whether the job has more than one process.
    pub fn is_distributed(&self) -> bool {
        self.size > 1
    }

    /// Replaces `data` on every rank by its element-wise sum over the ranks. The sum is the
    /// same on every rank; its order of additions is MPI's.
    pub fn all_reduce_sum(&self, data: &mut [f32]) {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            m.all_reduce_sum(data);
        }
        let _ = data;
    }

    /// [`Group::all_reduce_sum`] for f64 values (losses, counts, norms).
    pub fn all_reduce_sum_f64(&self, data: &mut [f64]) {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            m.all_reduce_sum(data);
        }
        let _ = data;
    }

    /// Every rank's `value`, in rank order.
    pub fn all_gather(&self, value: u64) -> Vec<u64> {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            return m.all_gather(value);
        }
        vec![value]
    }

    /// Every rank gets rank `root`'s `bytes` (their length included).
    pub fn broadcast(&self, root: usize, bytes: &mut Vec<u8>) {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            m.broadcast(root, bytes);
        }
        let _ = (root, bytes);
    }

    /// Every rank's `mine`, in rank order, on every rank (one broadcast per rank: for small
    /// messages).
    pub fn all_gather_bytes(&self, mine: &[u8]) -> Vec<Vec<u8>> {
        (0..self.size)
            .map(|r| {
                let mut bytes = if r == self.rank {
                    mine.to_vec()
                } else {
                    Vec::new()
                };
                self.broadcast(r, &mut bytes);
                bytes
            })
            .collect()
    }

    /// Every rank gets rank `root`'s `data` (of the same length everywhere).
    pub fn broadcast_f32(&self, root: usize, data: &mut [f32]) {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            m.broadcast_f32(root, data);
        }
        let _ = (root, data);
    }

    /// Waits until every rank has called it.
    pub fn barrier(&self) {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            m.barrier();
        }
    }

    /// Ends the whole job with `code`: every rank, not only this one (MPI_Abort), so no rank is
    /// left waiting in a collective. A single process just exits.
    pub fn abort(&self, code: i32) -> ! {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            m.abort(code);
        }
        std::process::exit(code)
    }

    /// "rank R: " in a job of several processes, else nothing: the prefix of messages that
    /// may come from any rank.
    pub fn label(&self) -> String {
        if self.is_distributed() {
            format!("rank {}: ", self.rank)
        } else {
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_process_group_is_the_identity() {
        let g = Group::from_launch(None).unwrap();
        assert_eq!(
            (g.rank(), g.size(), g.local_rank(), g.local_size()),
            (0, 1, 0, 1)
        );
        assert!(g.is_root() && !g.is_distributed());
        let mut v = [1.5f32, -2.0];
        g.all_reduce_sum(&mut v);
        assert_eq!(v, [1.5, -2.0]);
        let mut d = [3.0f64];
        g.all_reduce_sum_f64(&mut d);
        assert_eq!(d, [3.0]);
        assert_eq!(g.all_gather(7), vec![7]);
        assert_eq!(g.all_gather_bytes(b"xy"), vec![b"xy".to_vec()]);
        let mut b = b"abc".to_vec();
        g.broadcast(0, &mut b);
        assert_eq!(b, b"abc");
        assert_eq!(g.label(), "");
        // A launcher that started one process is the same as none.
        let one = Launch {
            launcher: "mpirun",
            rank: 0,
            size: 1,
        };
        assert!(!Group::from_launch(Some(one)).unwrap().is_distributed());
    }

    #[cfg(not(feature = "mpi"))]
    #[test]
    fn several_processes_without_mpi_are_refused_naming_the_fix() {
        let launch = Launch {
            launcher: "mpirun",
            rank: 1,
            size: 2,
        };
        let e = Group::from_launch(Some(launch)).err().unwrap().to_string();
        assert!(e.contains("mpirun started 2 processes"), "{e}");
        assert!(e.contains("--features mpi"), "{e}");
    }
}
