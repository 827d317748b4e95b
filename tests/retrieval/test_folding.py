"""Batch norms folded into the convolutions before them (retrieval/encoders/folding.py): the same outputs
from fewer passes over the activations, and nothing folded where the graph does not allow it."""

import pytest
import torch
from torch import nn

from retrieval.encoders.folding import fold_batch_norms


def randomized(model: nn.Module) -> nn.Module:
    """Batch norms with statistics and affine terms far from the identity, so a wrong fold shows."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean = torch.randn(size, generator=generator)
            module.running_var = torch.rand(size, generator=generator) + 0.5
            module.weight.data = torch.rand(size, generator=generator) + 0.5
            module.bias.data = torch.randn(size, generator=generator)
    return model.eval()


def example(side: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))


def norms(model: nn.Module) -> int:
    return sum(isinstance(module, nn.BatchNorm2d) for module in model.modules())


def test_each_convolution_and_its_batch_norm_become_one_convolution_with_the_same_output():
    model = randomized(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                     nn.Conv2d(8, 4, 3, stride=2), nn.BatchNorm2d(4)))
    with torch.no_grad():
        before = model(example())
    assert fold_batch_norms(model, example(8)) == 2  # a small example is enough to see the graph
    assert norms(model) == 0 and isinstance(model[1], nn.Identity) and isinstance(model[2], nn.ReLU)
    with torch.no_grad():
        torch.testing.assert_close(model(example()), before, rtol=1e-5, atol=1e-5)


class ChangedInBetween(nn.Module):
    """A batch norm reading the convolution's output after an in-place change: not a conv → norm pair."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y.mul_(-1.0).relu_()
        return self.norm(y)


class ReadTwice(nn.Module):
    """The convolution's output also feeds a residual sum: folding would change that sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.norm(y) + y


class RegisteredOutOfOrder(nn.Module):
    """Registered conv, norm, but the norm runs on the input, before the convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


@pytest.mark.parametrize("make", [ChangedInBetween, ReadTwice, RegisteredOutOfOrder], ids=lambda make: make.__name__)
def test_nothing_is_folded_where_the_output_would_change_and_the_model_stays_as_it_was(make):
    model = randomized(make())
    conv, norm = model.conv, model.norm
    with torch.no_grad():
        before = model(example())
    assert fold_batch_norms(model, example(8)) == 0
    assert model.conv is conv and model.norm is norm  # put back, untouched
    with torch.no_grad():
        torch.testing.assert_close(model(example()), before, rtol=0, atol=0)


def test_a_model_in_training_mode_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="eval"):
        fold_batch_norms(model, example(8))


def test_timm_batch_norms_keep_their_activation_and_every_one_of_efficientnet_lite_is_folded():
    import timm

    torch.manual_seed(0)
    model = randomized(timm.create_model("efficientnet_lite0", pretrained=False, num_classes=10))
    before_norms = norms(model)
    with torch.no_grad():
        before = model(example(64))
    assert fold_batch_norms(model, example(32)) == before_norms > 40
    assert norms(model) == 0
    assert isinstance(model.bn2, nn.Sequential) and isinstance(model.bn2[1], nn.ReLU6)  # the activation stays
    with torch.no_grad():
        torch.testing.assert_close(model(example(64)), before, rtol=1e-4, atol=1e-4)


def channels_last(model: nn.Module) -> bool:
    weights = [module.weight for module in model.modules() if isinstance(module, nn.Conv2d)]
    return all(weight.is_contiguous(memory_format=torch.channels_last) for weight in weights)


def test_the_loaded_offline_network_and_deeplab_are_folded_and_channels_last_with_the_plain_outputs():
    """What the registry loads on a CPU: the shared EfficientNet-Lite2 (semantic vectors and CAM masks)
    and DeepLabV3-ResNet101 are folded and laid out channels-last; their outputs match the same weights
    unfolded in torch's default layout."""
    import timm

    from retrieval.encoders import deeplab
    from retrieval.encoders.catalog import LITE2_CLASSIFIER
    from retrieval.encoders.offline import BN_EPS, ClassifierWithFeatures, shared_network

    network = shared_network(LITE2_CLASSIFIER.path(), "efficientnet_lite2")
    assert norms(network) == 0
    assert network.device.type == "cpu" and network.memory_format == torch.channels_last and channels_last(network)
    plain = timm.create_model("efficientnet_lite2", pretrained=False, bn_eps=BN_EPS)
    plain_state = plain.state_dict()
    file_state = torch.load(LITE2_CLASSIFIER.path(), map_location="cpu", weights_only=True)
    plain.load_state_dict(dict(zip(plain_state, file_state.values(), strict=True)))
    unfolded = ClassifierWithFeatures(plain, input_size=network.input_size).eval()
    assert (unfolded.feature_mean == network.feature_mean).all()  # read before the last batch norm was folded
    pictures = example(network.input_size)
    with torch.no_grad():
        for folded_out, plain_out in zip(network(pictures), unfolded(pictures), strict=True):
            torch.testing.assert_close(folded_out, plain_out, rtol=1e-4, atol=1e-4)

    torch.manual_seed(0)
    model = randomized(deeplab.build_model())
    state = model.state_dict()
    folded = deeplab.DeepLabSegmenter(key="test/deeplab", model=model)
    unfolded_model = deeplab.build_model().eval()
    unfolded_model.load_state_dict(state)
    unfolded_segmenter = deeplab.DeepLabSegmenter(key="test/deeplab", model=unfolded_model, fold_norms=False,
                                                  memory_format=torch.contiguous_format)
    assert norms(folded.model) == 0 and norms(unfolded_segmenter.model) > 100
    assert channels_last(folded.model) and not channels_last(unfolded_segmenter.model)
    with torch.no_grad():
        a, b = folded.model(example(96))["out"], unfolded_segmenter.model(example(96))["out"]
    # Random weights through 101 layers make large logits: the difference is float rounding at their scale.
    assert (a - b).abs().max() <= 1e-4 * b.abs().max()
    assert (a.argmax(dim=1) == b.argmax(dim=1)).float().mean() > 0.999
