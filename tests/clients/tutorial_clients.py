"""The Triton tutorial's two clients against `modelyard serve`, through the real tritonclient.

Part 1 (Conceptual Guide, client.py): a photo -> text_detection -> crop -> text_recognition
over tritonclient.http with binary tensors. The tutorial's post-processing uses OpenCV; here
the same steps are written with numpy and Pillow (the box of the highest-scoring EAST pixel,
cropped, grey, 32x100). Every server answer is compared with ONNX Runtime run here on the same
model file and the same tensor.

Part 5 (client.py of the ensemble): the image file's bytes -> ensemble_model ->
recognized_text over tritonclient.grpc. The Rust test compares the texts with the same
ensemble run in-process.

Also the other calls tritonclient users make (health, metadata, config, statistics,
repository index, errors, compression, JSON tensors). The last line printed is a JSON report.
"""
import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def close(a, b, what, rel=1e-3):
    check(a.shape == b.shape, f"{what}: shape {a.shape} vs {b.shape}")
    scale = max(1.0, float(np.abs(b).max()))
    diff = float(np.abs(a - b).max())
    check(diff <= rel * scale, f"{what}: max |diff| {diff} vs ONNX Runtime (scale {scale})")
    return diff


def detection_preprocessing(path):
    # cv2.dnn.blobFromImage(image, 1.0, (640, 480), (123.68, 116.78, 103.94), swapRB=True)
    # then NCHW -> NHWC, as the tutorial's client does.
    img = Image.open(path).convert("RGB").resize((640, 480), Image.BILINEAR)
    blob = np.asarray(img, dtype=np.float32) - np.array([123.68, 116.78, 103.94], np.float32)
    return blob[None, ...]


def crop_best_box(scores, geometry, image):
    # The highest-scoring pixel's axis-aligned box (EAST: distances to top, right, bottom,
    # left, at a stride of 4), cropped from the input, grey, resized to 32x100.
    y, x = np.unravel_index(np.argmax(scores[0, :, :, 0]), scores.shape[1:3])
    top, right, bottom, left = geometry[0, y, x, :4]
    cx, cy = 4 * x, 4 * y
    h, w = image.shape[1:3]
    x0, x1 = int(max(0, cx - left)), int(min(w, cx + right))
    y0, y1 = int(max(0, cy - top)), int(min(h, cy + bottom))
    if x1 - x0 < 2 or y1 - y0 < 2:
        x0, y0, x1, y1 = 0, 0, w, h
    grey = image[0, y0:y1, x0:x1, :].mean(axis=2)
    grey = grey - grey.min()
    grey = (255.0 * grey / max(1e-6, grey.max())).astype(np.uint8)
    crop = np.asarray(Image.fromarray(grey).resize((100, 32), Image.BILINEAR), np.float32)
    crop = crop / 127.5 - 1.0
    return crop[None, None, ...].astype(np.float32), (x0, y0, x1, y1)


def recognition_postprocessing(scores):
    # Greedy CTC over the tutorial's 37 classes (blank, 0-9, a-z).
    alphabet = "-0123456789abcdefghijklmnopqrstuvwxyz"
    best = scores[0].argmax(axis=-1) if scores.ndim == 3 else scores.argmax(axis=-1)
    text, last = [], 0
    for k in best.reshape(-1):
        if k != last and k != 0:
            text.append(alphabet[k])
        last = k
    return "".join(text)


def part1(url, fixtures, image_path):
    report = {}
    client = httpclient.InferenceServerClient(url=url)
    check(client.is_server_live(), "server live")
    check(client.is_server_ready(), "server ready")
    check(client.is_model_ready("text_detection"), "text_detection ready")
    meta = client.get_server_metadata()
    check("binary_tensor_data" in meta["extensions"], f"extensions {meta}")
    md = client.get_model_metadata("text_detection")
    check(md["inputs"][0]["name"] == "input_images:0", f"metadata {md}")
    cfg = client.get_model_config("text_recognition")
    check(cfg["input"][0]["dims"] == [1, 1, 32, 100], f"config {cfg}")

    det = ort.InferenceSession(os.path.join(fixtures, "tutorial_repository/text_detection/1/model.onnx"))
    rec = ort.InferenceSession(os.path.join(fixtures, "tutorial_repository/text_recognition/1/model.onnx"))

    image = detection_preprocessing(image_path)
    detection_input = httpclient.InferInput("input_images:0", image.shape, datatype="FP32")
    detection_input.set_data_from_numpy(image, binary_data=True)
    response = client.infer(model_name="text_detection", inputs=[detection_input])
    scores = response.as_numpy("feature_fusion/Conv_7/Sigmoid:0")
    geometry = response.as_numpy("feature_fusion/concat_3:0")
    want_scores, want_geometry = det.run(
        ["feature_fusion/Conv_7/Sigmoid:0", "feature_fusion/concat_3:0"], {"input_images:0": image}
    )
    report["detection_scores_diff"] = close(scores, want_scores, "detection scores")
    report["detection_geometry_diff"] = close(geometry, want_geometry, "detection geometry")

    crop, box = crop_best_box(scores, geometry, image)
    report["box"] = box
    recognition_input = httpclient.InferInput("input.1", crop.shape, datatype="FP32")
    recognition_input.set_data_from_numpy(crop, binary_data=True)
    response = client.infer(model_name="text_recognition", inputs=[recognition_input])
    logits = response.as_numpy("308")
    (want,) = rec.run(["308"], {"input.1": crop})
    report["recognition_diff"] = close(logits, want, "recognition")
    report["part1_text"] = recognition_postprocessing(logits)
    check(report["part1_text"] == recognition_postprocessing(want), "CTC text vs ONNX Runtime's")

    # The same crop as JSON tensors (binary_data=False), JSON output, compressed both ways.
    recognition_input.set_data_from_numpy(crop, binary_data=False)
    output = httpclient.InferRequestedOutput("308", binary_data=False)
    for req_c, resp_c in [(None, None), ("gzip", "gzip"), ("deflate", "deflate")]:
        response = client.infer(
            model_name="text_recognition",
            inputs=[recognition_input],
            outputs=[output],
            request_compression_algorithm=req_c,
            response_compression_algorithm=resp_c,
        )
        close(response.as_numpy("308"), want, f"recognition as JSON ({req_c})")

    stats = client.get_inference_statistics("text_recognition")
    count = stats["model_stats"][0]["inference_stats"]["success"]["count"]
    check(count == 4, f"statistics count {count}")
    index = client.get_model_repository_index()
    check(sorted(m["name"] for m in index) == ["text_detection", "text_recognition"], f"index {index}")

    try:
        client.infer(model_name="nope", inputs=[recognition_input])
        check(False, "an unknown model answered")
    except InferenceServerException as e:
        check("unknown model" in e.message(), f"unknown model error: {e}")
    bad = httpclient.InferInput("input.1", [1, 1, 32, 99], datatype="FP32")
    bad.set_data_from_numpy(np.zeros((1, 1, 32, 99), np.float32), binary_data=True)
    try:
        client.infer(model_name="text_recognition", inputs=[bad])
        check(False, "a wrong shape answered")
    except InferenceServerException as e:
        check("input.1" in e.message(), f"wrong shape error: {e}")
    try:
        client.load_model("text_recognition")
        check(False, "load answered in mode none")
    except InferenceServerException as e:
        check("not allowed" in e.message(), f"load error: {e}")
    client.close()
    return report


def part5(url, image_path):
    client = grpcclient.InferenceServerClient(url=url)
    check(client.is_server_live() and client.is_server_ready(), "gRPC live and ready")
    check(client.is_model_ready("ensemble_model"), "ensemble ready")
    md = client.get_model_metadata("ensemble_model", as_json=True)
    check(md["inputs"][0]["name"] == "input_image", f"metadata {md}")
    cfg = client.get_model_config("ensemble_model", as_json=True)
    check(cfg["config"]["platform"] == "ensemble", f"config {cfg}")

    def successes():
        stats = client.get_inference_statistics("ensemble_model", as_json=True)
        return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", "0"))

    before = successes()
    image_data = np.fromfile(image_path, dtype="uint8")
    image_data = np.expand_dims(image_data, axis=0)
    input_tensors = [grpcclient.InferInput("input_image", image_data.shape, "UINT8")]
    input_tensors[0].set_data_from_numpy(image_data)
    results = client.infer(model_name="ensemble_model", inputs=input_tensors)
    output_data = results.as_numpy("recognized_text").astype(str)
    texts = [str(t) for t in output_data.reshape(-1)]

    check(successes() == before + 1, "the ensemble's success count went up by one")
    index = client.get_model_repository_index(as_json=True)
    check(len(index["models"]) == 6, f"index {index}")
    try:
        client.infer(model_name="nope", inputs=input_tensors)
        check(False, "an unknown model answered")
    except InferenceServerException as e:
        check("unknown model" in e.message(), f"unknown model error: {e}")
    try:
        client.get_system_shared_memory_status()
        check(False, "shared memory answered")
    except InferenceServerException as e:
        check("UNIMPLEMENTED" in str(e.status()), f"shared memory error: {e.status()} {e}")
    client.close()
    return texts


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--http", required=True)
    p.add_argument("--grpc", required=True)
    p.add_argument("--fixtures", required=True)
    p.add_argument("--image", required=True)
    a = p.parse_args()
    report = part1(a.http, a.fixtures, os.path.join(a.fixtures, "images/img1.jpg"))
    report["part5_texts"] = part5(a.grpc, a.image)
    print(json.dumps(report))


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
