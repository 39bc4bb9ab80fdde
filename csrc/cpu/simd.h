// SIMD clone attribute shared by the CPU kernels: hot loops are compiled for AVX-512, AVX2+FMA and the
// baseline ISA, picked at load time by the ifunc resolver GCC/clang generate for target_clones
// (x86-64 Linux); elsewhere, once. AGD_NO_TARGET_CLONES turns it off.
#pragma once

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && \
    (!defined(__clang__) || __clang_major__ >= 14) && !defined(AGD_NO_TARGET_CLONES)
#define AGD_SIMD_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define AGD_SIMD_CLONES
#endif
