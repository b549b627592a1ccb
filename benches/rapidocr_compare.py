#!/usr/bin/env python3
"""The same pipeline in Python, for comparison with `cargo bench --bench ocr_pipeline`:
rapidocr_onnxruntime 1.4.4 (PaddleOCR PP-OCRv4 det/rec + mobile v2 cls on ONNX Runtime).
Not needed by the tests.

    pip install rapidocr_onnxruntime==1.4.4
    python3 benches/rapidocr_compare.py [IMAGE ...]
"""
import os
import statistics
import sys
import time

from rapidocr_onnxruntime import RapidOCR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
images = sys.argv[1:] or [os.path.join(ROOT, "fixtures/images/img1.jpg"), os.path.join(ROOT, "fixtures/images/sign_1280x720.png")]
engine = RapidOCR()
for path in images:
    result, _ = engine(path)  # warm-up
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        result, elapse = engine(path)
        runs.append(time.perf_counter() - t)
    texts = [r[1] for r in (result or [])]
    print(f"{os.path.basename(path)}: median {statistics.median(runs) * 1e3:.0f} ms over {len(runs)} runs "
          f"(det/cls/rec {', '.join(f'{e * 1e3:.0f}' for e in elapse)} ms); text: {texts}")
