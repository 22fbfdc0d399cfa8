"""Send real handwritten digits to a running nnserve and print what it answers.

    python examples/client.py --url http://127.0.0.1:8000 --count 5
    python examples/client.py --model digits-cnn --protocol v2   # tritonclient, binary tensors

The digits are scikit-learn's ``load_digits`` (8x8 images, raw pixel values 0..16); the
native protocol POSTs them as JSON to ``/predict``, the V2 protocol sends them with
``tritonclient.http`` as binary FP32 tensors to ``/v2/models/<model>/infer``.
"""

from __future__ import annotations

import argparse
import os
import sys
from urllib.parse import urlsplit

import httpx
import numpy as np
from sklearn.datasets import load_digits


def predict_native(
    url: str, model: str | None, images: np.ndarray, headers: dict[str, str]
) -> tuple[str, list[str], np.ndarray]:
    """POST the images to ``/predict``; return the model name, labels and probabilities."""
    body: dict = {"inputs": images.reshape(len(images), -1).tolist()}
    if model:
        body["model"] = model
    response = httpx.post(f"{url}/predict", json=body, headers=headers, timeout=30)
    if response.is_error:
        sys.exit(f"POST /predict failed with {response.status_code}: {response.text}")
    answer = response.json()
    probabilities = np.array([row["probabilities"] for row in answer["predictions"]])
    return f"{answer['model']} (version {answer['version']})", answer["labels"], probabilities


def predict_v2(
    url: str, model: str | None, images: np.ndarray, headers: dict[str, str]
) -> tuple[str, list[str], np.ndarray]:
    """Infer with tritonclient over the Open Inference Protocol; same return as the native one."""
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    if not model:
        # V2 has no default model: ask the native API which one the server would pick.
        listing = httpx.get(f"{url}/models", headers=headers, timeout=10)
        listing.raise_for_status()
        model = listing.json()["default"]
    parts = urlsplit(url)
    client = triton.InferenceServerClient(
        parts.netloc + parts.path.rstrip("/"), ssl=parts.scheme == "https"
    )
    # tritonclient adds its own headers to the dict it is given: hand it a copy.
    try:
        metadata = client.get_model_metadata(model, headers=dict(headers))
        # The model's own input shape, e.g. [-1, 64] or [-1, 8, 8]; -1 is the batch.
        tensor = metadata["inputs"][0]
        batch = images.reshape(len(images), *tensor["shape"][1:]).astype(np.float32)
        infer_input = triton.InferInput(tensor["name"], list(batch.shape), "FP32")
        infer_input.set_data_from_numpy(batch, binary_data=True)
        output = triton.InferRequestedOutput("probabilities", binary_data=True)
        result = client.infer(model, [infer_input], outputs=[output], headers=dict(headers))
    except InferenceServerException as exc:
        sys.exit(f"V2 inference failed: {exc}")
    finally:
        client.close()
    probabilities = result.as_numpy("probabilities")
    # The V2 metadata has no labels; the native model description does.
    info = httpx.get(f"{url}/models/{model}", headers=headers, timeout=10)
    labels = info.json().get("labels") if info.is_success else None
    labels = labels or [str(i) for i in range(probabilities.shape[1])]
    return f"{model} (version {metadata['versions'][0]})", labels, probabilities


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, send the digits and print one line per digit."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    parser.add_argument("--model", help="model name (default: the server's default model)")
    parser.add_argument("--count", type=int, default=5, help="how many digits to send")
    parser.add_argument("--offset", type=int, default=0, help="index of the first digit")
    parser.add_argument("--protocol", choices=["native", "v2"], default="native")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("NNSERVE_API_KEY"),
        help="bearer token when the server sets NNSERVE_API_KEY (default: that variable)",
    )
    args = parser.parse_args(argv)

    digits = load_digits()
    images = digits.images[args.offset : args.offset + args.count]
    truth = digits.target[args.offset : args.offset + args.count]
    if len(images) == 0:
        sys.exit("no digits in that range (load_digits has 1797)")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    url = args.url.rstrip("/")
    predict = predict_v2 if args.protocol == "v2" else predict_native
    model, labels, probabilities = predict(url, args.model, images, headers)

    print(f"model {model}, {len(images)} digits via the {args.protocol} protocol")
    print(f"digit  true  label       p  probabilities of {', '.join(labels)}")
    for index, (target, row) in enumerate(zip(truth, probabilities, strict=True)):
        best = int(np.argmax(row))
        values = " ".join(f"{p:.3f}" for p in row)
        number = args.offset + index
        print(f"{number:>5}  {target:>4}  {labels[best]:>5}  {row[best]:6.4f}  {values}")


if __name__ == "__main__":
    main()
