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
