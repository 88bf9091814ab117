"""Bit fingerprints of the kernels our stages run, under the portable pin: which kernel differs between two machines.

    python scripts/kernel_hashes.py                        # one line per kernel: name and md5 of its outputs
    python scripts/kernel_hashes.py --out FILE             # the same lines, also written to FILE
    python scripts/kernel_hashes.py --compare FILE         # exit 1 and name every kernel whose bits differ from FILE
    python scripts/kernel_hashes.py --only vit_ --compare FILE   # kernels whose name starts with vit_

`repro.portable` promises the same bytes on any AVX2 x86-64 CPU (README, "The same bits on every
machine"). When a stage's output hash differs between two machines anyway, a whole training run
says only *that* it differs, after thousands of steps. This script runs each kernel of the
default pipeline once, at the shapes the stages use (the FFN sweep's 8192-wide layer, the patch
transformer's attention and MLP, the SAE's batched matmuls, the optimizers' steps, the random
number generators, NumPy's BLAS and LAPACK), forward and backward, and prints the md5 of every
output and gradient. Inputs are built from integers (no random generator, no transcendental
function), so they are the same bits everywhere and a differing line points at that kernel
alone. Run it on both machines, or compare with a file a machine committed
(scripts/kernel_hashes/), and the first differing kernel is the suspect.

The pin is the pipeline's own (stages/_numerics.py), set before torch and NumPy load; one thread,
flushed denormals and deterministic algorithms, as stages/_common.setup_torch sets them.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from stages import _numerics  # noqa: E402

_numerics.pin(True)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from mnist_sae import sae_kernel, sparse_input  # noqa: E402
from mnist_sae.ffn import FFN  # noqa: E402
from mnist_sae.ffn_train import make_adam, train_ffn  # noqa: E402
from mnist_sae.space import InputSpace  # noqa: E402
from mnist_sae.vit import ViT, ViTConfig, train_vit, ViTSettings  # noqa: E402


def md5(*arrays) -> str:
    h = hashlib.md5()
    for a in arrays:
        a = a.detach().contiguous().numpy() if isinstance(a, torch.Tensor) else np.ascontiguousarray(a)
        h.update(a.tobytes())
    return h.hexdigest()[:12]


def ints(*shape: int, salt: int = 0) -> torch.Tensor:
    """Floats in [-0.5, 0.5) from an integer hash of the index: exact, the same bits on any machine."""
    n = int(np.prod(shape))
    i_N = torch.arange(n, dtype=torch.int64) + salt * 1_000_003
    return (((i_N * 2654435761 + 12345) % (1 << 20)).to(torch.float32) / (1 << 20) - 0.5).reshape(shape)


def pixels(n: int, salt: int = 0) -> torch.Tensor:
    """uint8 images [n, 784], ~80% zeros like MNIST."""
    v_NI = (ints(n, 784, salt=salt) + 0.5) * 1.25 - 0.25
    return (v_NI.clamp(min=0.0) * 255).to(torch.uint8)


def with_grads(f, *inputs, salt: int = 7):
    """Outputs of f and the gradients of every input under a fixed upstream gradient."""
    xs = [x.clone().requires_grad_(True) for x in inputs]
    y = f(*xs)
    y.backward(ints(*y.shape, salt=salt))
    return [y] + [x.grad for x in xs]


def kernels() -> dict:
    """name -> function returning the tensors to fingerprint, in pipeline order."""
    x_BI = pixels(8).float() / 255
    ks = {
        # the FFN sweep (train_ffn): 8192-wide layer at batch 8, fused Adam
        "ffn_init_8192": lambda: list(FFN(8192, generator=torch.Generator().manual_seed(0)).parameters()),
        "ffn_mm_forward_backward": lambda: with_grads(lambda x, w: x @ w, x_BI, ints(784, 8192) * 0.1),
        "ffn_relu_cross_entropy": lambda: with_grads(
            lambda h: F.cross_entropy(F.relu(h) @ ints(64, 10, salt=2), torch.arange(8) % 10), ints(8, 64, salt=3)),
        "ffn_adam_fused_step": lambda: _optimizer_steps(lambda ps: make_adam(ps, 1e-4), 784, 8192),
        # the sparse-input kernels of our own (Numba) that train the pixel weights on CPU
        "ffn_sparse_product": lambda: [sparse_input.product(x_BI, ints(784, 8192) * 0.1)],
        "ffn_sparse_product_4096": lambda: [sparse_input.product(pixels(4096).float() / 255, ints(784, 1024) * 0.1)],
        "ffn_sparse_adam_step": _sparse_adam_steps,
        "ffn_train_1024_20_steps": _ffn_train,
        # the MNIST SAE (calibrate, train_sae, baselines): G models batched with baddbmm
        "sae_baddbmm": lambda: with_grads(lambda b, z, w: torch.baddbmm(b, z, w),
                                         ints(3, 1, 32), ints(3, 8, 10, salt=1), ints(3, 10, 32, salt=2)),
        "sae_sigmoid_exp": lambda: with_grads(lambda u: torch.sigmoid(u / 0.1) + u.exp(), ints(3, 8, 32)),
        # the SAE loop of our own (Numba) that train_sae and calibrate run at batch 8 on CPU
        "sae_kernel_jumprelu_sigmoid_kl": lambda: _sae_kernel_train("jumprelu", "sigmoid", 1.0),
        "sae_kernel_jumprelu_rectangle": lambda: _sae_kernel_train("jumprelu", "rectangle", 0.0),
        "sae_kernel_relu": lambda: _sae_kernel_train("relu", "sigmoid", 0.0),
        "sae_topk_scatter": lambda: with_grads(
            lambda u: torch.zeros_like(u).scatter(-1, u.topk(16, dim=-1).indices, F.relu(u.topk(16, dim=-1).values)),
            ints(256, 512)),
        # the patch transformer (acts_model): batch 128, 17 tokens, d_model 64, 4 heads of 16, MLP 128
        "vit_init": lambda: list(ViT(ViTConfig(), generator=torch.Generator().manual_seed(0)).parameters()),
        "vit_mm_patch": lambda: with_grads(lambda a, b: a @ b, ints(128, 16, 49), ints(49, 64, salt=1)),
        "vit_einsum_qkv": lambda: with_grads(lambda a, b: torch.einsum("BSD,DAE->BSAE", a, b),
                                             ints(128, 17, 64), ints(64, 4, 16, salt=1)),
        "vit_einsum_scores": lambda: with_grads(lambda q, k: torch.einsum("BSAE,BTAE->BAST", q, k) / 4.0,
                                                ints(128, 17, 4, 16), ints(128, 17, 4, 16, salt=1)),
        "vit_softmax": lambda: with_grads(lambda s: s.softmax(-1), ints(128, 4, 17, 17) * 8),
        "vit_einsum_attend": lambda: with_grads(lambda p, v: torch.einsum("BAST,BTAE->BSAE", p, v),
                                                ints(128, 4, 17, 17) + 0.5, ints(128, 17, 4, 16, salt=1)),
        "vit_einsum_out": lambda: with_grads(lambda o, w: torch.einsum("BSAE,AED->BSD", o, w),
                                             ints(128, 17, 4, 16, salt=3), ints(4, 16, 64, salt=4)),
        "vit_layer_norm": lambda: with_grads(lambda r, g, b: F.layer_norm(r, (64,), g, b, eps=1e-5),
                                             ints(128, 17, 64) * 4, ints(64, salt=1) + 1, ints(64, salt=2)),
        "vit_mm_mlp": lambda: with_grads(lambda h, w: h @ w, ints(128, 17, 64), ints(64, 128, salt=1)),
        "vit_gelu": lambda: with_grads(F.gelu, ints(128, 17, 128) * 8),  # oneDNN's JIT eltwise kernel
        "vit_gelu_aten": lambda: _without_onednn(lambda: with_grads(F.gelu, ints(128, 17, 128) * 8)),
        "vit_cross_entropy": lambda: with_grads(lambda z: F.cross_entropy(z, torch.arange(128) % 10), ints(128, 10) * 8),
        "vit_adamw_step": lambda: _optimizer_steps(lambda ps: torch.optim.AdamW(ps, lr=3e-3, weight_decay=1e-2), 64, 128),
        "vit_forward_backward": _vit_forward_backward,
        "vit_train_20_steps": _vit_train,
        "vit_forward_backward_aten": lambda: _without_onednn(_vit_forward_backward),
        "vit_train_20_steps_aten": lambda: _without_onednn(_vit_train),
        # random numbers (inits, batch order, subsamples)
        "torch_randn": lambda: [torch.randn(4096, generator=torch.Generator().manual_seed(0))],
        "torch_rand": lambda: [torch.rand(4096, generator=torch.Generator().manual_seed(0))],
        "torch_randperm": lambda: [torch.randperm(48000, generator=torch.Generator().manual_seed(0))],
        "numpy_default_rng": lambda: [np.random.default_rng(0).standard_normal(4096)],
        # NumPy (OpenBLAS) and LAPACK (baselines: PCA, k-means, probes)
        "numpy_matmul": lambda: [ints(2000, 64).numpy().astype(np.float64) @ ints(64, 32, salt=1).numpy().astype(np.float64)],
        "numpy_svd": lambda: list(np.linalg.svd(ints(500, 10).numpy().astype(np.float64), full_matrices=False)),
        "numpy_exp_log": lambda: [np.exp(ints(4096).numpy() * 8), np.log(ints(4096).numpy() + 0.5 + 1e-3)],
    }
    return ks


def _without_onednn(f):
    """f with torch's oneDNN (mkldnn) paths off: F.gelu then runs ATen's own AVX2 kernel. GELU is
    the only one of these kernels that runs in oneDNN (ONEDNN_VERBOSE=all shows jit:avx2
    eltwise_gelu_erf), so these lines tell whether ATen's kernel agrees across machines where
    oneDNN's does not."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        return f()
    finally:
        torch.backends.mkldnn.enabled = before


def _optimizer_steps(make_opt, *shape: int):
    """Three steps of the optimizer make_opt([p]) builds on one parameter of that shape, with
    integer-made gradients: the parameter and Adam's two moments after them."""
    p = torch.nn.Parameter(ints(*shape) * 0.1)
    opt = make_opt([p])
    for s in range(3):
        p.grad = ints(*shape, salt=s + 1) * 1e-2
        opt.step()
    return [p] + [opt.state[p][k] for k in ("exp_avg", "exp_avg_sq")]


def _sparse_adam_steps():
    """Three SparseInputAdam steps on an 8192-wide pixel weight: the weight and both moments."""
    W_IH = ints(784, 8192) * 0.1
    adam = sparse_input.SparseInputAdam(W_IH, lr=1e-4)
    for s in range(3):
        adam.step(pixels(8, salt=s + 1).float() / 255, ints(8, 8192, salt=s + 1) * 1e-2)
    return [W_IH, torch.from_numpy(adam.m_IH), torch.from_numpy(adam.v_IH)]


def _sae_kernel_train(arch: str, ste: str, kl_coef: float):
    """200 steps of mnist_sae.sae_kernel on 3 stacked models at the MNIST SAE's shapes (batch 8,
    10 inputs, 32 latents), every input from integers: the weights and the logged loss terms."""
    params = {"W_enc_GDF": ints(3, 10, 32), "W_dec_GFD": ints(3, 32, 10, salt=1), "b_enc_GF": ints(3, 32, salt=2) * 0.1,
              "b_dec_GD": ints(3, 10, salt=3) * 0.1}
    if arch == "jumprelu":
        params["log_theta_GF"] = ints(3, 32, salt=4) - 2.0
    idx_GSB = ((np.arange(3 * 200 * 8) * 7919) % 1000).reshape(3, 200, 8)
    space = InputSpace(ints(10, salt=6), ints(10, salt=7) + 1.0, True)
    out = sae_kernel.train(params, ints(1000, 10, salt=5) * 4, idx_GSB, ints(3, salt=8) + 0.6, arch=arch, ste=ste,
                           width=0.1, kl_coef=kl_coef, space=space, lr=1e-2, decay_from=150, warm_steps=20,
                           weight_decay=0.0, log_every=50)
    return list(params.values()) + [out]


def _ffn_train():
    gen = torch.Generator().manual_seed(0)
    model = FFN(1024, generator=gen)
    train_ffn(model, pixels(160), torch.arange(160) % 10, lr=1e-3, epochs=1, batch_size=8, generator=gen, progress=False)
    return list(model.parameters())


def _vit_forward_backward():
    model = ViT(ViTConfig(), generator=torch.Generator().manual_seed(0))
    logits_BO = model(pixels(128))
    F.cross_entropy(logits_BO, torch.arange(128) % 10).backward()
    return [logits_BO] + [p.grad for p in model.parameters()]


def _vit_train():
    gen = torch.Generator().manual_seed(0)
    model = ViT(ViTConfig(), generator=gen)
    settings = ViTSettings(epochs=1, batch_size=128, lr=3e-3, weight_decay=1e-2)
    train_vit(model, pixels(2560), torch.arange(2560) % 10, settings, generator=gen)
    return list(model.parameters())


def fingerprints(only: str = "") -> dict[str, str]:
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    torch.use_deterministic_algorithms(True)
    return {name: md5(*f()) for name, f in kernels().items() if name.startswith(only)}


def read_reference(path: str) -> dict[str, str]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise SystemExit(_bad(f"kernel_hashes: cannot read --compare file {path}: {e.strerror}"))
    ref = {}
    for line in lines:
        if line.strip() and not line.startswith("#"):
            parts = line.split()
            if len(parts) != 2:
                raise SystemExit(_bad(f"kernel_hashes: {path}: expected 'name md5' lines, got {line!r}"))
            ref[parts[0]] = parts[1]
    return ref


def _bad(message: str) -> int:
    print(message, file=sys.stderr)
    return 2


def header() -> list[str]:
    d = _numerics.describe()
    info = {}
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    cpu = (f"{info.get('vendor_id', '?')} {info.get('model name', platform.processor())}, family {info.get('cpu family', '?')} "
           f"model {info.get('model', '?')}")
    return [f"# cpu: {cpu}", f"# torch {torch.__version__}, numpy {np.__version__}, portable {d['portable']}, "
            f"cpu_capability {d.get('cpu_capability')}"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="also write the lines to this file")
    ap.add_argument("--compare", help="a file this script wrote; exit 1 when any kernel's bits differ")
    ap.add_argument("--only", default="", help="only kernels whose name starts with this")
    args = ap.parse_args()
    ref = read_reference(args.compare) if args.compare else None
    hashes = fingerprints(args.only)
    if not hashes:
        return _bad(f"kernel_hashes: no kernel name starts with {args.only!r}")
    head = header()
    lines = head + [f"{name} {h}" for name, h in hashes.items()]
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    if ref is None:
        print("\n".join(lines))
        return 0
    differ = 0
    print("\n".join(head))
    for name, h in hashes.items():
        verdict = "no reference" if name not in ref else "same" if ref[name] == h else "DIFFERS"
        differ += verdict == "DIFFERS"
        print(f"{name:26s} {h} {ref.get(name, '-'):12s} {verdict}")
    print(f"{differ} of {len(hashes)} kernels differ from {args.compare}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
