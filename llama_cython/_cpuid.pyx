# cython: language_level=3
# distutils: language = c
"""What this CPU can run, asked of the CPU itself (``cpuid`` and ``xgetbv``), before any of
llama.cpp is loaded.

A tiny module of its own, compiled for the x86-64 baseline and holding no llama.cpp code: the
loader (:mod:`llama_cython._loader`) uses it to choose which build of the core this CPU can run.
``/proc/cpuinfo`` is not enough: it is Linux-only, and under an emulator (``qemu-x86_64 -cpu
...``) it describes the host, not the CPU the process runs on. A feature counts only when the
CPU has it *and* the operating system saves its registers (XCR0), as ggml's own check does.

Names are those of Linux's ``/proc/cpuinfo`` flags.
"""

cdef extern from *:
    """
    #if defined(__x86_64__) || defined(__i386__)
    #include <cpuid.h>
    #define LLAMA_CYTHON_X86 1
    static int lc_cpuid(unsigned leaf, unsigned sub, unsigned *r) {
        return __get_cpuid_count(leaf, sub, &r[0], &r[1], &r[2], &r[3]);
    }
    static unsigned long long lc_xgetbv(void) {
        unsigned eax, edx;
        __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(eax), "=d"(edx) : "c"(0));
        return ((unsigned long long)edx << 32) | eax;
    }
    #else
    #define LLAMA_CYTHON_X86 0
    static int lc_cpuid(unsigned leaf, unsigned sub, unsigned *r) { (void)leaf; (void)sub; (void)r; return 0; }
    static unsigned long long lc_xgetbv(void) { return 0; }
    #endif
    """
    int LLAMA_CYTHON_X86
    int lc_cpuid(unsigned leaf, unsigned sub, unsigned *r)
    unsigned long long lc_xgetbv()


# (leaf, subleaf, register index: eax=0 ebx=1 ecx=2 edx=3, bit, name)
cdef list _BITS = [
    (1, 0, 3, 26, "sse2"),
    (1, 0, 2, 0, "pni"), (1, 0, 2, 9, "ssse3"), (1, 0, 2, 12, "fma"), (1, 0, 2, 13, "cx16"),
    (1, 0, 2, 19, "sse4_1"), (1, 0, 2, 20, "sse4_2"), (1, 0, 2, 22, "movbe"),
    (1, 0, 2, 23, "popcnt"), (1, 0, 2, 28, "avx"), (1, 0, 2, 29, "f16c"),
    (7, 0, 1, 3, "bmi1"), (7, 0, 1, 5, "avx2"), (7, 0, 1, 8, "bmi2"),
    (7, 0, 1, 16, "avx512f"), (7, 0, 1, 17, "avx512dq"), (7, 0, 1, 28, "avx512cd"),
    (7, 0, 1, 30, "avx512bw"), (7, 0, 1, 31, "avx512vl"),
    (7, 0, 2, 1, "avx512vbmi"), (7, 0, 2, 11, "avx512_vnni"),
    (7, 0, 3, 22, "amx_bf16"), (7, 0, 3, 24, "amx_tile"), (7, 0, 3, 25, "amx_int8"),
    (7, 1, 0, 4, "avx_vnni"), (7, 1, 0, 5, "avx512_bf16"),
    (0x80000001, 0, 2, 0, "lahf_lm"), (0x80000001, 0, 2, 5, "abm"),
]

# Features that need the OS to save extra register state (XCR0 bits), and which bits.
cdef dict _NEEDS_XCR0 = {
    "avx": 0x6, "avx2": 0x6, "fma": 0x6, "f16c": 0x6, "avx_vnni": 0x6,
    "avx512f": 0xE6, "avx512dq": 0xE6, "avx512cd": 0xE6, "avx512bw": 0xE6, "avx512vl": 0xE6,
    "avx512vbmi": 0xE6, "avx512_vnni": 0xE6, "avx512_bf16": 0xE6,
    "amx_bf16": 0x60000, "amx_tile": 0x60000, "amx_int8": 0x60000,
}


def features() -> frozenset:
    """The instruction-set features this process can use (empty on a CPU other than x86)."""
    cdef unsigned regs[4]
    cdef unsigned long long xcr0 = 0
    if not LLAMA_CYTHON_X86:
        return frozenset()
    found = set()
    cache = {}
    for leaf, sub, reg, bit, name in _BITS:
        key = (leaf, sub)
        if key not in cache:
            regs[0] = regs[1] = regs[2] = regs[3] = 0
            # __get_cpuid_count checks the highest (extended) leaf itself and fails above it
            if not lc_cpuid(leaf, sub, regs):
                regs[0] = regs[1] = regs[2] = regs[3] = 0
            cache[key] = (regs[0], regs[1], regs[2], regs[3])
        if (cache[key][reg] >> bit) & 1:
            found.add(name)
    # OSXSAVE (leaf 1, ecx bit 27): xgetbv may be executed and tells what the OS saves.
    if (cache.get((1, 0), (0, 0, 0, 0))[2] >> 27) & 1:
        xcr0 = lc_xgetbv()
    for name, bits in _NEEDS_XCR0.items():
        if name in found and (xcr0 & bits) != bits:
            found.discard(name)
    return frozenset(found)
