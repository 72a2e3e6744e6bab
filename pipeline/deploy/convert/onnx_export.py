"""PyTorch -> ONNX: the student exported with TorchScript's exporter (BatchNorm folded into the convolutions in
eval mode), constant sub-graphs folded (F.pad's pads arithmetic), checked by ``onnx.checker`` and run by
onnxruntime for parity with PyTorch."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch

from pipeline.errors import EdgepickError

ONNX_TOLERANCE = 1e-4  # onnxruntime vs PyTorch, Keras vs onnxruntime: max |difference| in probability


def export_onnx(model, opset: int = 17):
    """The student as a checked ONNX model (1, 3, N) -> (1, 3, N) probabilities, constants folded."""
    model = model.eval()
    buffer = io.BytesIO()
    dummy = torch.zeros(1, 3, model.in_samples)
    with warnings_silenced():
        torch.onnx.export(
            model, dummy, buffer, dynamo=False, opset_version=opset, do_constant_folding=True,
            input_names=["window"], output_names=["probabilities"],
        )
    return checked_onnx(buffer.getvalue(), "ONNX model")


def checked_onnx(data: bytes, what: str):
    """The exported ONNX model in ``data``, its constants folded, after onnx.checker's full check (one error line
    naming ``what`` otherwise)."""
    import onnx

    onnx_model = fold_constants(onnx.load_from_string(data))
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
    except onnx.checker.ValidationError as error:
        raise EdgepickError(f"exported {what} fails onnx.checker: {error}") from error
    return onnx_model


@contextlib.contextmanager
def warnings_silenced():
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the converter chats on stdout
        warnings.simplefilter("ignore")
        yield


def fold_constants(onnx_model, rounds: int = 8):
    """Replace every node whose inputs are all constants (or a Shape of a static tensor) by an initializer."""
    for _ in range(rounds):
        before = len(onnx_model.graph.node)
        onnx_model = _fold_once(onnx_model)
        if len(onnx_model.graph.node) == before:
            break
    return onnx_model


def _fold_once(onnx_model):
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    onnx_model = onnx.shape_inference.infer_shapes(onnx_model)
    graph = onnx_model.graph
    static = {}
    for info in list(graph.value_info) + list(graph.input):
        dims = info.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            static[info.name] = np.array([d.dim_value for d in dims], dtype=np.int64)
    del graph.value_info[:]  # re-inferred next round
    known = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    kept, folded = [], {}
    for node in graph.node:
        if node.op_type == "Shape" and node.input[0] in static and not node.attribute:
            known[node.output[0]] = folded[node.output[0]] = static[node.input[0]]
            continue
        if node.op_type == "Constant" or all((not i) or i in known for i in node.input):
            single = onnx.helper.make_model(
                onnx.helper.make_graph(
                    [node], "fold",
                    [onnx.helper.make_tensor_value_info(i, onnx.TensorProto.UNDEFINED, None) for i in node.input if i],
                    [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output],
                ),
                opset_imports=onnx_model.opset_import,
            )
            outputs = ReferenceEvaluator(single).run(None, {i: known[i] for i in node.input if i})
            for name, value in zip(node.output, outputs):
                known[name] = np.asarray(value)
                folded[name] = np.asarray(value)
        else:
            kept.append(node)
    used = {i for node in kept for i in node.input} | {o.name for o in graph.output}
    initializers = [init for init in graph.initializer if init.name in used]
    initializers += [numpy_helper.from_array(v, name) for name, v in folded.items() if name in used]
    new_graph = onnx.helper.make_graph(kept, graph.name, graph.input, graph.output, initializers)
    out = onnx.helper.make_model(new_graph, opset_imports=onnx_model.opset_import, producer_name="edgepick")
    out.ir_version = onnx_model.ir_version
    return out


def onnxruntime_run(onnx_model, windows: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(onnx_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"window": w[None].astype(np.float32)})[0] for w in windows])


def torch_run(model, windows: np.ndarray, batch: int = 64) -> np.ndarray:
    model = model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(windows), batch):
            out.append(model(torch.as_tensor(windows[start : start + batch], dtype=torch.float32)).numpy())
    return np.concatenate(out)
