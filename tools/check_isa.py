#!/usr/bin/env python3
"""Check that fusedopt's shared object runs on x86-64 CPUs without AVX.

Only the kernels compiled for a SIMD level (functions in the C++ namespaces
``fusedopt::avx2`` and ``fusedopt::avx512``) may use AVX, AVX2, AVX-512 or
other VEX/EVEX-encoded instructions; dispatch picks them only on CPUs that
have them. Any such instruction anywhere else (the baseline kernels, the
dispatcher, the bindings) would crash an older CPU, so this script fails.

A classic way to get one: a template or inline function defined outside the
per-level namespace is instantiated in each per-level translation unit, the
linker keeps one copy (the One Definition Rule lets it), and that copy may be
the AVX one. The script also fails when a level's namespace holds no vector
code of its width at all: then the linker has thrown that level's kernels away
in favour of another copy, and which copy wins is an accident of link order.

The object must keep its symbol table (a stripped one, as scikit-build-core
installs into wheels, names only exported symbols, so instructions could not be
attributed to functions): check the build tree's copy and pass the shipped one
as --same-code-as, which asserts both have the same .text bytes.

Usage: check_isa.py [--allow-empty-level] [--same-code-as SHIPPED_SO] SO_FILE...
       check_isa.py --self-test                        (checks this checker)
Exit status 1 on any finding.
"""
import argparse
import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile

# Namespaces whose functions may use the instructions of their level.
ALLOWED_PREFIXES = {"avx2": "fusedopt::avx2::", "avx512": "fusedopt::avx512::"}

# Mnemonics starting with "v" that are not VEX/EVEX encoded (VMX/SVM, verr/verw).
LEGACY_V = {
    "verr", "verw", "vmcall", "vmlaunch", "vmresume", "vmxoff", "vmxon", "vmread", "vmwrite",
    "vmptrld", "vmptrst", "vmclear", "vmfunc", "vmrun", "vmload", "vmsave", "vmmcall",
}
# VEX-encoded general-purpose instructions (BMI1/BMI2): absent from baseline x86-64 too.
VEX_GPR = {"andn", "bextr", "blsi", "blsmsk", "blsr", "bzhi", "mulx", "pdep", "pext", "rorx", "sarx", "shlx",
           "shrx"}
# AVX-512 mask registers %k0-%k7 (with AT&T syntax every register has a %).
MASK_REG = re.compile(r"%k[0-7]\b")
FUNC_HEADER = re.compile(r"^[0-9a-f]+ <(.+)>:$")
INSN_LINE = re.compile(r"^\s+[0-9a-f]+:\s+(.*)$")


def avx_reason(insn):
    """Why an instruction (objdump's text after the address) needs AVX, or None."""
    fields = insn.split()
    if not fields:
        return None
    mnemonic = fields[0]
    if mnemonic in {"rex", "lock", "rep", "repz", "repnz", "notrack", "bnd", "data16", "addr32", "cs", "ds"} \
            and len(fields) > 1:
        mnemonic = fields[1]
    if "%zmm" in insn:
        return "zmm register (AVX-512)"
    if "%ymm" in insn:
        return "ymm register (AVX)"
    if MASK_REG.search(insn):  # every k-instruction (kmovw, kortestw ...) names one
        return "mask register (AVX-512)"
    if mnemonic.startswith("v") and mnemonic not in LEGACY_V:
        return "VEX/EVEX-encoded instruction"
    if mnemonic in VEX_GPR:
        return "VEX-encoded BMI instruction"
    return None


def vector_width(insn):
    """The widest register an instruction names: 'zmm', 'ymm' or None."""
    if "%zmm" in insn:
        return "zmm"
    if "%ymm" in insn:
        return "ymm"
    return None


def function_name(demangled):
    """The qualified name of a demangled symbol, without return type, template
    arguments, parameters or clone suffixes: 'double fusedopt::avx2::run<float, 1u>(S const&)'
    gives 'fusedopt::avx2::run'. A lambda or local entity keeps its enclosing
    function's name (the text before the first top-level parenthesis)."""
    name = demangled.split("@", 1)[0]
    out, depth, i = [], 0, 0
    while i < len(name):
        if name.startswith("operator", i) and depth == 0:
            out.append(name[i:])  # operator<, operator() ...: the name ends here
            break
        ch = name[i]
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            break
        elif depth == 0:
            out.append(ch)
        i += 1
    skeleton = "".join(out).strip()
    # The return type, if any, is separated from the name by a space at depth 0.
    return skeleton.rsplit(" ", 1)[-1] if " " in skeleton else skeleton


def level_of(func):
    for level, prefix in ALLOWED_PREFIXES.items():
        if func.startswith(prefix):
            return level
    return None


def disassemble(so_path):
    objdump = shutil.which("objdump")
    if objdump is None:
        sys.exit("check_isa: objdump not found (install binutils)")
    result = subprocess.run([objdump, "-d", "-C", "--no-show-raw-insn", so_path], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"check_isa: objdump failed on {so_path}: {result.stderr.strip()}")
    return result.stdout


def has_symbol_table(so_path):
    sections = subprocess.run(["readelf", "-S", "-W", so_path], capture_output=True, text=True, check=True).stdout
    return re.search(r"\]\s+\.symtab\s", sections) is not None


def text_section(so_path):
    """The bytes of the .text section (all the code the object runs)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "text.bin")
        subprocess.run(["objcopy", "-O", "binary", "--only-section=.text", so_path, out], check=True)
        with open(out, "rb") as f:
            return f.read()


def scan(disassembly):
    """Findings outside the allowed namespaces, and per level the number of
    functions in its namespace that use registers of its width."""
    findings = []  # (function, reason, instruction)
    seen = set()
    level_functions = {level: 0 for level in ALLOWED_PREFIXES}
    level_vector = {level: 0 for level in ALLOWED_PREFIXES}
    current, level, counted = "", None, False
    for line in disassembly.splitlines():
        header = FUNC_HEADER.match(line)
        if header:
            current = header.group(1)
            level = level_of(function_name(current))
            counted = False
            if level:
                level_functions[level] += 1
            continue
        insn = INSN_LINE.match(line)
        if not insn:
            continue
        text = insn.group(1)
        if level:
            want = "zmm" if level == "avx512" else "ymm"
            if not counted and vector_width(text) == want:
                level_vector[level] += 1
                counted = True
            continue
        reason = avx_reason(text)
        if reason and current not in seen:
            seen.add(current)
            findings.append((current, reason, text.strip()))
    return findings, level_functions, level_vector


def check(so_path, allow_empty_level=False):
    """Prints a report for one shared object; returns True when it passes."""
    if not has_symbol_table(so_path):
        print(f"check_isa: FAIL {so_path}: stripped (no .symtab), so instructions cannot be attributed to "
              f"functions; check the unstripped build-tree copy with --same-code-as {so_path}")
        return False
    disassembly = disassemble(so_path)
    if not re.search(r"file format elf64-x86-64", disassembly):
        print(f"check_isa: {so_path}: not an x86-64 object, nothing to check")
        return True
    findings, functions, vector = scan(disassembly)
    ok = not findings
    shown = 12
    for func, reason, text in findings[:shown]:
        print(f"check_isa: FAIL {so_path}: {reason} outside fusedopt::avx2/avx512 in {func}: {text}")
    if len(findings) > shown:
        print(f"check_isa: FAIL {so_path}: ... and {len(findings) - shown} more functions")
    for level, count in functions.items():
        want = "zmm" if level == "avx512" else "ymm"
        print(f"check_isa: {level}: {count} functions in {ALLOWED_PREFIXES[level]}, "
              f"{vector[level]} of them use {want} registers")
        if count and not vector[level] and not allow_empty_level:
            print(f"check_isa: FAIL {so_path}: the {level} kernels use no {want} register: their code was "
                  f"replaced at link time by another level's copy (templates/inline functions shared across "
                  f"the per-level translation units must live inside the per-level namespace)")
            ok = False
    if ok:
        print(f"check_isa: OK {so_path}: no AVX instruction outside {', '.join(ALLOWED_PREFIXES.values())}")
    return ok


# --- self test: build tiny shared objects and check the verdicts ----------

_SELF_TEST_SOURCE = r"""
#include <cstddef>
namespace fusedopt { namespace NS {
double sum(const float* x, std::size_t n) {
  float acc[8] = {};
  for (std::size_t i = 0; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += x[i + j] * x[i + j];
  double s = 0;
  for (float a : acc) s += a;
  return s;
}
} }
"""


def self_test():
    """Compiles the same function with -mavx2 into fusedopt::avx2 (allowed) and
    into fusedopt::baseline (a violation); the checker must pass the first and
    fail the second. Also checks the instruction classifier on known lines."""
    cases = [("vmovups (%rdi),%ymm0", True), ("vaddss %xmm1,%xmm0,%xmm0", True),
             ("kmovw %k1,%eax", True), ("vfmadd231ps %zmm2,%zmm1,%zmm0{%k1}", True),
             ("shlx %rax,%rbx,%rcx", True), ("movups (%rdi),%xmm0", False), ("addss %xmm1,%xmm0", False),
             ("vmcall", False), ("call 1040 <foo@plt>", False), ("kernel_data", False)]
    for text, expected in cases:
        assert (avx_reason(text) is not None) == expected, text
    names = [("double fusedopt::avx2::run_segment<float, 10u>(fusedopt::Segment<float> const&)",
              "fusedopt::avx2::run_segment"),
             ("fusedopt::avx512::fill_table(fusedopt::KernelTable&)::{lambda()#1}::operator()() const",
              "fusedopt::avx512::fill_table"),
             ("double fusedopt::run_segment<double, 3u>(fusedopt::avx2::X const&) [clone .cold]",
              "fusedopt::run_segment"),
             ("fusedopt::baseline::f(int) [clone .constprop.0]", "fusedopt::baseline::f"),
             ("foo@plt", "foo")]
    for demangled, expected in names:
        assert function_name(demangled) == expected, (demangled, function_name(demangled))
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        print("check_isa: self-test: no C++ compiler, compiled cases skipped")
        return True
    with tempfile.TemporaryDirectory() as tmp:
        verdicts = {}
        for ns in ("avx2", "baseline"):
            src = os.path.join(tmp, f"{ns}.cpp")
            so = os.path.join(tmp, f"lib{ns}.so")
            with open(src, "w") as f:
                f.write(_SELF_TEST_SOURCE.replace("NS", ns))
            subprocess.run([compiler, "-O3", "-mavx2", "-shared", "-fPIC", src, "-o", so], check=True)
            with contextlib.redirect_stdout(io.StringIO()):  # the baseline case's FAIL is expected
                verdicts[ns] = check(so)
    assert verdicts == {"avx2": True, "baseline": False}, verdicts
    print("check_isa: self-test passed (AVX in fusedopt::baseline is caught, in fusedopt::avx2 allowed)")
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("so_files", nargs="*", help="shared objects to check (e.g. fusedopt/_core*.so)")
    parser.add_argument("--self-test", action="store_true", help="check the checker on compiled examples")
    parser.add_argument("--same-code-as", metavar="SHIPPED_SO",
                        help="also require the checked object's .text to equal this (e.g. stripped) object's")
    parser.add_argument("--allow-empty-level", action="store_true",
                        help="do not fail when a SIMD level's namespace holds no vector code of its width")
    args = parser.parse_args(argv)
    if args.self_test:
        self_test()
        if not args.so_files:
            return 0
    if not args.so_files:
        parser.error("give at least one shared object")
    results = [check(path, args.allow_empty_level) for path in args.so_files]
    if args.same_code_as:
        shipped = text_section(args.same_code_as)
        for path in args.so_files:
            same = text_section(path) == shipped
            print(f"check_isa: {'OK' if same else 'FAIL'} .text of {path} "
                  f"{'equals' if same else 'differs from'} .text of {args.same_code_as}")
            results.append(same)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
