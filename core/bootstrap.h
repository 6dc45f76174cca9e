/* bootstrap.h: rank discovery for external launchers and a TCP rendezvous for one blob.
 *
 * Invariants:
 * - zp_bootstrap_env takes the first family whose rank variable is set, in this order:
 *   zp launch (ZP_RANK, ZP_WORLD_SIZE, ZP_LOCAL_RANK), torchrun (RANK, WORLD_SIZE, LOCAL_RANK),
 *   Open MPI (OMPI_COMM_WORLD_RANK/_SIZE/_LOCAL_RANK), Slurm (SLURM_PROCID, SLURM_NTASKS,
 *   SLURM_LOCALID). Values must be whole decimal integers with 0 <= rank < world and
 *   0 <= local_rank < world; errors name the variable. No variable at all: rank 0 of 1.
 * - zp_tcp_bcast: rank 0 listens on `port` (all interfaces of master_addr's family) and hands
 *   `blob` to every other rank, which connects to master_addr:port (retrying until the
 *   deadline). Frames carry a magic, a version, the world size and the exact length; anything
 *   that does not match is refused and named. Rank 0 returns once every rank acknowledged. */
#ifndef ZP_BOOTSTRAP_H
#define ZP_BOOTSTRAP_H
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

int zp_bootstrap_env(int* rank, int* world, int* local_rank, char* err, size_t errlen);
/* Which family zp_bootstrap_env would use: "zp", "torchrun", "openmpi", "slurm" or "none". */
const char* zp_bootstrap_env_source(void);
/* MASTER_ADDR (default "127.0.0.1" when unset) and MASTER_PORT (required, 1..65535). */
int zp_bootstrap_master(char* addr, size_t addrlen, int* port, char* err, size_t errlen);

int zp_tcp_bcast(const char* master_addr, int port, int rank, int world, void* blob, size_t len,
                 double timeout_s, char* err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
