//! Which launcher started this process, and as which rank of how many: read from the
//! variables each launcher sets (the way fairseq and Marian find their rank).

/// A process started by a launcher as `rank` of `size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    pub launcher: &'static str,
    pub rank: usize,
    pub size: usize,
}

/// The (launcher, rank variable, size variable) triples, most specific first: Open MPI's
/// `mpirun`, the PMI of MPICH's Hydra and Slurm's `--mpi=pmi2`, and Slurm's `srun` itself.
const SOURCES: [(&str, &str, &str); 3] = [
    ("mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("the PMI launcher", "PMI_RANK", "PMI_SIZE"),
    ("srun", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"),
];

impl Launch {
    /// The launch this process's environment describes, if any.
    pub fn from_env() -> Option<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`Launch::from_env`] over any variable lookup.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Option<Self> {
        SOURCES.iter().find_map(|&(launcher, rank, size)| {
            let rank = var(rank)?.trim().parse().ok()?;
            let size: usize = var(size)?.trim().parse().ok()?;
            (rank < size).then_some(Self {
                launcher,
                rank,
                size,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(vars: &[(&str, &str)]) -> Option<Launch> {
        Launch::from_vars(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn launchers_are_recognised_by_their_variables() {
        assert_eq!(launch(&[]), None);
        let ompi = launch(&[("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "4")]);
        assert_eq!(
            ompi,
            Some(Launch {
                launcher: "mpirun",
                rank: 1,
                size: 4
            })
        );
        let srun = launch(&[("SLURM_PROCID", "3"), ("SLURM_STEP_NUM_TASKS", "8")]).unwrap();
        assert_eq!((srun.launcher, srun.rank, srun.size), ("srun", 3, 8));
        // An sbatch script's own environment has SLURM_PROCID but no step: not a launch.
        assert_eq!(
            launch(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "8")]),
            None
        );
        // Nonsense is ignored rather than trusted.
        assert_eq!(launch(&[("PMI_RANK", "5"), ("PMI_SIZE", "2")]), None);
        assert_eq!(launch(&[("PMI_RANK", "x"), ("PMI_SIZE", "2")]), None);
    }
}
