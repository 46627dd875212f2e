//! AMX (Advanced Matrix Extensions: tile registers and `tdpbf16ps`, Sapphire Rapids and later Xeons):
//! detection and the Linux permission a process needs before its first tile instruction.
//!
//! Linux keeps the 8 KiB of tile data out of a thread's saved state until the process asks for it with
//! `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`; a tile instruction before that raises SIGILL.
//! The permission is process-wide and granted once: [`enable`] asks for it during feature detection, so
//! AMX counts as present only where the CPU has it, the OS saves it and this process may use it.

/// CPUID.(EAX=7, ECX=0):EDX bits: AMX-BF16 (22), AMX-TILE (24).
const AMX_BF16: u32 = 1 << 22;
const AMX_TILE: u32 = 1 << 24;
/// XCR0 bits of the tile state: XTILECFG (17) and XTILEDATA (18).
const XCR0_TILE: u64 = (1 << 17) | (1 << 18);
const SYS_ARCH_PRCTL: i64 = 158;
const ARCH_GET_XCOMP_PERM: i64 = 0x1022;
const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
const XFEATURE_XTILEDATA: i64 = 18;

/// Whether AMX-TILE and AMX-BF16 may be used by this process (asking Linux for the permission if needed).
pub fn enable() -> bool {
    // CPUID leaf 7 (zeros on a CPU without it)
    let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
    if leaf7.edx & (AMX_BF16 | AMX_TILE) != AMX_BF16 | AMX_TILE {
        return false;
    }
    // OSXSAVE (CPUID.1:ECX bit 27) before XGETBV.
    let leaf1 = std::arch::x86_64::__cpuid(1);
    if leaf1.ecx & (1 << 27) == 0 || xcr0() & XCR0_TILE != XCR0_TILE {
        return false;
    }
    if cfg!(target_os = "linux") {
        // Safety: arch_prctl with these codes reads/sets a permission bit; no memory is passed.
        unsafe {
            if arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0 {
                return false;
            }
            let mut perm = 0u64;
            if arch_prctl(ARCH_GET_XCOMP_PERM, &mut perm as *mut u64 as i64) != 0 {
                return false;
            }
            perm & (1 << XFEATURE_XTILEDATA) != 0
        }
    } else {
        false
    }
}

fn xcr0() -> u64 {
    let (lo, hi): (u32, u32);
    // Safety: XGETBV with ECX = 0 is valid once OSXSAVE is set (checked by the caller).
    unsafe {
        std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
            options(nomem, nostack, preserves_flags));
    }
    ((hi as u64) << 32) | lo as u64
}

/// The raw system call (no libc wrapper exists for arch_prctl).
unsafe fn arch_prctl(code: i64, arg: i64) -> i64 {
    let ret: i64;
    std::arch::asm!("syscall", inlateout("rax") SYS_ARCH_PRCTL => ret, in("rdi") code, in("rsi") arg,
        lateout("rcx") _, lateout("r11") _, options(nostack));
    ret
}

/// The tile primitives of the AMX kernels (`matmul::amx`, `quant::amx`). One register plan for all:
/// C0..C3 = tmm0-3 (16 × 16 f32 accumulators), A0, A1 = tmm4, tmm5 (16 rows × 32 bf16), B0, B1 = tmm6,
/// tmm7 (16 pair rows × 16 bf16 pairs). Safety (all): AMX-TILE/BF16 with the process's permission;
/// [`Tiles::begin`] before any other.
pub mod tiles {
    use std::arch::asm;

    /// Palette 1, all eight tiles 16 rows × 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    /// Loads the configuration; the tiles are released when this is dropped.
    pub struct Tiles(());

    impl Tiles {
        /// # Safety
        /// See the module docs.
        pub unsafe fn begin() -> Tiles {
            let mut c = [0u8; 64];
            c[0] = 1;
            for t in 0..8 {
                // colsb (u16 at 16 + 2t) and rows (u8 at 48 + t)
                c[16 + 2 * t] = 64;
                c[48 + t] = 16;
            }
            let cfg = TileConfig(c);
            asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
            Tiles(())
        }

        /// C0..C3 = 0.
        #[inline(always)]
        pub fn zero(&self) {
            // Safety: the configuration is loaded (`self` exists).
            unsafe {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                )
            };
        }

        /// C0..C3 loaded from `c[0..4]`, rows `stride` bytes apart (0: one row repeated, e.g. a bias).
        ///
        /// # Safety
        /// 16 rows of 64 bytes are readable at each pointer.
        #[inline(always)]
        pub unsafe fn load(&self, c: [*const f32; 4], stride: usize) {
            asm!(
                "tileloadd tmm0, [{c0} + {st}*1]",
                "tileloadd tmm1, [{c1} + {st}*1]",
                "tileloadd tmm2, [{c2} + {st}*1]",
                "tileloadd tmm3, [{c3} + {st}*1]",
                c0 = in(reg) c[0],
                c1 = in(reg) c[1],
                c2 = in(reg) c[2],
                c3 = in(reg) c[3],
                st = in(reg) stride,
                options(nostack, readonly)
            );
        }

        /// C0 += A0·B0, C1 += A0·B1, C2 += A1·B0, C3 += A1·B1 for one step of 32 values of k: A0, A1 at
        /// `a0`, `a1` with rows `lda` bytes apart, B0, B1 at `b0`, `b1` with rows `ldb` bytes apart.
        ///
        /// # Safety
        /// 16 rows of 64 bytes are readable at each operand.
        #[inline(always)]
        pub unsafe fn step(
            &self,
            a0: *const u16,
            a1: *const u16,
            lda: usize,
            b0: *const u16,
            b1: *const u16,
            ldb: usize,
        ) {
            asm!(
                "tileloadd tmm4, [{a0} + {lda}*1]",
                "tileloadd tmm6, [{b0} + {ldb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {ldb}*1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {lda}*1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0,
                a1 = in(reg) a1,
                b0 = in(reg) b0,
                b1 = in(reg) b1,
                lda = in(reg) lda,
                ldb = in(reg) ldb,
                options(nostack, readonly)
            );
        }

        /// C_j += A0·B_j, j = 0..4, for one step of 32 values of k with one A tile (at most 16 rows of x:
        /// decode batches): A0 at `a` with rows `lda` bytes apart, B_j at `b[j]` with rows `ldb` bytes
        /// apart. B tiles rotate through tmm6, tmm7, tmm5 (A1 is not used here), so every B tile is
        /// loaded once.
        ///
        /// # Safety
        /// 16 rows of 64 bytes are readable at each operand.
        #[inline(always)]
        pub unsafe fn step4(&self, a: *const u16, lda: usize, b: [*const u16; 4], ldb: usize) {
            asm!(
                "tileloadd tmm4, [{a} + {lda}*1]",
                "tileloadd tmm6, [{b0} + {ldb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {ldb}*1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{b2} + {ldb}*1]",
                "tdpbf16ps tmm2, tmm4, tmm5",
                "tileloadd tmm6, [{b3} + {ldb}*1]",
                "tdpbf16ps tmm3, tmm4, tmm6",
                a = in(reg) a,
                lda = in(reg) lda,
                b0 = in(reg) b[0],
                b1 = in(reg) b[1],
                b2 = in(reg) b[2],
                b3 = in(reg) b[3],
                ldb = in(reg) ldb,
                options(nostack, readonly)
            );
        }

        /// Stores C0..C3 (16 rows of 16 f32 each) at `c[0..4]`, rows `stride` bytes apart.
        ///
        /// # Safety
        /// 16 rows of 64 bytes are writable at each pointer.
        #[inline(always)]
        pub unsafe fn store(&self, c: [*mut f32; 4], stride: usize) {
            asm!(
                "tilestored [{c0} + {st}*1], tmm0",
                "tilestored [{c1} + {st}*1], tmm1",
                "tilestored [{c2} + {st}*1], tmm2",
                "tilestored [{c3} + {st}*1], tmm3",
                c0 = in(reg) c[0],
                c1 = in(reg) c[1],
                c2 = in(reg) c[2],
                c3 = in(reg) c[3],
                st = in(reg) stride,
                options(nostack)
            );
        }
    }

    impl Drop for Tiles {
        fn drop(&mut self) {
            // Safety: the configuration was loaded by `begin`.
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
        }
    }
}
