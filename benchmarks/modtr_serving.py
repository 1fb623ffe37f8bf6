"""Serving N infrared-like modalities: one frozen detector + N ModTr translators in ``DetectionService`` vs N
fine-tuned copies of the detector (one per modality), N = 1..4.

    python benchmarks/modtr_serving.py [--detector fcos] [--translator mobilenet_v3_small] [--size 256 320]

Memory = bytes of the distinct parameters and buffers each setup keeps resident (the models themselves; what a
server holds whatever the traffic). Throughput = images/s on mixed-modality batches (``--batch`` images drawn
round-robin from the N modalities): the service translates each modality's group and runs the detector once on
the whole batch; the fine-tuned setup runs each modality's own detector on its group. Prints both as ratios,
and the per-image time of the service against a lone detector on RGB. Last, the N translators alone on equal
groups: one after the other (what the service does) vs one batched call over their stacked weights
(``torch.func.stack_module_state`` + ``vmap``), the same numbers both ways; on a GPU also one CUDA stream per
translator, one CUDA graph replaying all N, and bf16 autocast, each against one after the other in fp32.
"""

from __future__ import annotations

import argparse
import time

import torch


def model_bytes(*modules: torch.nn.Module) -> int:
    seen, total = set(), 0
    for m in modules:
        for t in (*m.parameters(), *m.buffers()):
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total


def best_of(fn, rounds: int) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()  # warm-up
    sync()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def stacked_vs_sequential(translators: list[torch.nn.Module], groups: torch.Tensor, rounds: int) -> float:
    """Time of one vmapped call over the stacked translator weights / the translators one after the other, on
    ``groups`` [N, n, C, H, W]; checks that both give the same images."""
    import copy

    from torch.func import functional_call, stack_module_state, vmap

    params, buffers = stack_module_state(translators)
    skeleton = copy.deepcopy(translators[0]).to("meta")
    stacked = vmap(lambda p, b, x: functional_call(skeleton, (p, b), (x,)))
    with torch.no_grad():
        one_by_one = lambda: torch.stack([t(g) for t, g in zip(translators, groups)])  # noqa: E731
        together = lambda: stacked(params, buffers, groups)  # noqa: E731
        torch.testing.assert_close(together(), one_by_one(), rtol=1e-4, atol=1e-4)
        return best_of(together, rounds) / best_of(one_by_one, rounds)


def gpu_ways(translators: list[torch.nn.Module], groups: torch.Tensor, rounds: int) -> dict[str, float]:
    """On CUDA, ways to run the N translators on equal groups, each timed / one after the other in fp32."""
    with torch.no_grad():
        one_by_one = lambda: [t(g) for t, g in zip(translators, groups)]  # noqa: E731
        base = best_of(one_by_one, rounds)
        streams = [torch.cuda.Stream() for _ in translators]

        def on_streams():
            here, outs = torch.cuda.current_stream(), []
            for t, g, s in zip(translators, groups, streams):
                s.wait_stream(here)
                with torch.cuda.stream(s):
                    outs.append(t(g))
            for s in streams:
                here.wait_stream(s)
            return outs

        static_in = groups.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as graph capture asks
            for _ in range(3):
                one_by_one()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = [t(g) for t, g in zip(translators, static_in)]

        def replay():
            static_in.copy_(groups)
            graph.replay()
            return static_out

        torch.testing.assert_close(replay(), one_by_one(), rtol=1e-4, atol=1e-4)

        def bf16():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return one_by_one()

        return {"CUDA streams": best_of(on_streams, rounds) / base, "CUDA graph": best_of(replay, rounds) / base,
                "bf16 autocast": best_of(bf16, rounds) / base}


def main() -> None:
    from transfer.methods.modtr import DetectionService
    from transfer.models.detectors import TorchvisionDetector, create_detector
    from transfer.models.translators import create_translator

    ap = argparse.ArgumentParser()
    ap.add_argument("--detector", default="fcos")
    ap.add_argument("--translator", default="mobilenet_v3_small")
    ap.add_argument("--size", type=int, nargs=2, default=[256, 320])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, nargs="+", default=[1, 2, 3, 4], help="numbers of modalities to measure")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h, w = args.size
    device = "cuda" if torch.cuda.is_available() else "cpu"
    make = lambda: TorchvisionDetector(create_detector(args.detector, "random", 91)).to(device)  # noqa: E731 (timing only)
    detector = make()
    service = DetectionService(detector, args.detector)
    lone = best_of(lambda: detector.predict(list(torch.rand(args.batch, 3, h, w, device=device))), args.rounds) / args.batch
    print(f"{args.detector}, translators UNet-{args.translator}, batch {args.batch} x {h}x{w}, {device}, "
          f"{args.threads} threads")
    print(f"lone detector on RGB: {1 / lone:.2f} images/s")
    fine_tuned = []
    for n in range(1, max(args.n) + 1):
        service.add_translator(f"ir{n}", create_translator("unet", encoder=args.translator, pretrained=None).to(device))
        fine_tuned.append(make())
        if n not in args.n:
            continue
        mods = [f"ir{1 + i % n}" for i in range(args.batch)]
        images = [torch.rand(1, h, w, device=device) for _ in range(args.batch)]
        t_service = best_of(lambda: service.detect(images, mods), args.rounds)

        def per_modality():
            for k, det in enumerate(fine_tuned):
                group = [images[i].expand(3, -1, -1) for i, m in enumerate(mods) if m == f"ir{k + 1}"]
                if group:
                    det.predict(group)

        t_ft = best_of(per_modality, args.rounds)
        mem_service = model_bytes(detector, *service.translators.values())
        mem_ft = model_bytes(*fine_tuned)
        print(f"N={n}: memory service {mem_service / 2**20:7.1f} MiB vs {n} detectors {mem_ft / 2**20:7.1f} MiB "
              f"-> {mem_service / mem_ft:.2f}x (goal at N=4: <= 0.5x); images/s service {args.batch / t_service:.2f} "
              f"vs fine-tuned {args.batch / t_ft:.2f} -> {t_ft / t_service:.2f}x; service per image / lone detector "
              f"{t_service / args.batch / lone:.2f}x (goal <= 1.2x)")
    n = max(args.n)
    translators = [service.translators[f"ir{k + 1}"] for k in range(n)]
    groups = torch.rand(n, max(1, args.batch // n), 1, h, w, device=device)
    print(f"{n} translators on equal groups: stacked weights + vmap / one after the other "
          f"{stacked_vs_sequential(translators, groups, args.rounds):.2f}x")
    if device == "cuda":
        for way, ratio in gpu_ways(translators, groups, args.rounds).items():
            print(f"{n} translators on equal groups: {way} / one after the other {ratio:.2f}x")


if __name__ == "__main__":
    main()
