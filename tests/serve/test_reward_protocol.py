"""The wire format: exact safetensors round trip, lossless PNG for 8-bit images, strict score checks,
and the restricted unpickler for Flow-GRPO answers."""
import os
import pickle

import numpy as np
import pytest
import torch

from flowrl.serve.reward_protocol import (ProtocolError, decode_request, encode_request, parse_flowgrpo_response,
                                          parse_response, restricted_loads)


def test_safetensors_round_trip_is_exact_for_any_shape():
    x = torch.randn(3, 5, 2, dtype=torch.float64)
    body, ctype = encode_request(x, ["a", "b", "ç"], [{"k": 1}, {}, {"t": [1, 2]}])
    samples, prompts, meta = decode_request(body, ctype)
    assert torch.equal(samples, x.float()) and prompts == ["a", "b", "ç"] and meta == [{"k": 1}, {}, {"t": [1, 2]}]


def test_png_round_trip_is_exact_on_8_bit_images():
    x = torch.randint(0, 256, (2, 3, 5, 7)).float() / 255
    samples, prompts, meta = decode_request(*encode_request(x, ["", ""], [{}, {}], "png"))
    assert torch.equal(samples, x) and prompts == ["", ""] and meta == [{}, {}]


def test_scores_are_checked():
    assert torch.equal(parse_response(b'{"scores": [1, 2.5]}', 2)[0], torch.tensor([1.0, 2.5]))
    for body, msg in [(b'{"scores": [1]}', "1 scores for 2"), (b'{"scores": [1, NaN]}', "non-finite"),
                      (b'{"scores": [1, "x"]}', "not a list of numbers"), (b'{"x": 1}', "no 'scores'"),
                      (b'{"scores": [1, ', "not JSON")]:
        with pytest.raises(ProtocolError, match=msg):
            parse_response(body, 2)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_takes_plain_data_only():
    plain = {"scores": [1.0, 2], "nested": ({"a": None, "b": True}, b"x", "s", {1, 2}, frozenset(), 3j)}
    assert restricted_loads(pickle.dumps(plain)) == plain
    for obj, name in [(Evil(), "system"), (np.array([1.0]), "numpy"), (torch.zeros(1), "torch")]:
        with pytest.raises(pickle.UnpicklingError, match=f"refused to unpickle .*{name}"):
            restricted_loads(pickle.dumps(obj))
    assert torch.equal(parse_flowgrpo_response(pickle.dumps({"outputs": [0.5, 1]}), 2), torch.tensor([0.5, 1.0]))
    with pytest.raises(ProtocolError, match="not a plain pickle"):
        parse_flowgrpo_response(pickle.dumps({"scores": np.zeros(2)}), 2)
