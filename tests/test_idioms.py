"""PyTorch and Keras habits that once did nothing, or failed deep inside NumPy: each now
works as such a user expects or raises an error that names the gpunet way."""
import numpy
import pytest

import gpunet
from gpunet import Dense, ReLU, Sequential, SoftmaxCrossEntropy, optim


def _mlp(seed=0):
    gpunet.manual_seed(seed)
    return Sequential(Dense(4, 8, activation="relu"), Dense(8, 3))


def _step(model, opt):
    x = numpy.random.default_rng(0).standard_normal((6, 4)).astype(numpy.float32)
    loss_fn = SoftmaxCrossEntropy()
    loss_fn(model(x), numpy.arange(6) % 3)
    opt.zero_grad()
    model.backward(loss_fn.backward())
    opt.step()


@pytest.mark.parametrize("freeze", [
    lambda m: setattr(m[0], "trainable", False),                 # Keras
    lambda m: setattr(m, "trainable", False),
    lambda m: setattr(m[0].weight, "requires_grad", False),     # PyTorch
    lambda m: m[0].weight.requires_grad_(False),
])
def test_freezing_the_keras_or_pytorch_way_raises_instead_of_training_on(freeze):
    model = _mlp()
    with pytest.raises(AttributeError, match=r"model\[1:\]\.parameters\(\)"):
        freeze(model)
    # nothing was stored: reading gives True, as every parameter is still trained
    assert model[0].trainable is True and model[0].weight.requires_grad is True


def test_trainable_and_requires_grad_true_are_accepted_and_change_nothing():
    model = _mlp()
    model[0].trainable = True
    model.trainable = numpy.True_
    assert model[0].weight.requires_grad_(True) is model[0].weight
    model[0].weight.requires_grad = True
    with pytest.raises(TypeError, match="trainable to be a bool"):
        model[0].trainable = 0
    with pytest.raises(TypeError, match="requires_grad to be a bool"):
        model[0].weight.requires_grad = "no"


def test_the_way_the_error_names_freezes():
    model = _mlp()
    before = model[0].weight.data.copy(), model[1].weight.data.copy()
    _step(model, optim.SGD(model[1:].parameters(), lr=0.1))
    assert numpy.array_equal(model[0].weight.data, before[0])
    assert not numpy.array_equal(model[1].weight.data, before[1])


@pytest.mark.parametrize("make, attr", [
    (lambda: Dense(4, 3), "weight"), (lambda: Dense(4, 3), "bias"),
    (lambda: gpunet.Conv2D(1, 2, 3), "weight"), (lambda: gpunet.Conv2D(1, 2, 3), "bias"),
    (lambda: gpunet.BatchNorm(3), "gamma"), (lambda: gpunet.BatchNorm(3), "beta"),
])
def test_an_array_assigned_to_a_parameter_attribute_is_refused_by_name(make, attr):
    layer = make()
    p = getattr(layer, attr)
    with pytest.raises(TypeError, match=rf"{type(layer).__name__}: expected {attr} to be a gpunet.Parameter, "
                                        rf"got ndarray; to change its values assign layer.{attr}.data = array"):
        setattr(layer, attr, numpy.zeros(p.shape, numpy.float32))
    assert getattr(layer, attr) is p                     # nothing stored
    with pytest.raises(TypeError, match=r"got list"):
        setattr(layer, attr, p.data.tolist())


def test_what_a_parameter_attribute_takes():
    gpunet.manual_seed(0)
    a, b = Dense(4, 4), Dense(4, 4)
    b.weight = a.weight                                  # tied weights: a Parameter
    assert b.weight is a.weight and len(Sequential(a, ReLU(), b).parameters()) == 3
    b.bias = None                                        # PyTorch's linear.bias = None: no bias
    assert [k for k in b.state_dict()] == ["weight"] and b(numpy.ones((2, 4), numpy.float32)).shape == (2, 4)
    with pytest.raises(TypeError, match="got None"):
        b.weight = None
    bn = gpunet.BatchNorm(3)
    with pytest.raises(TypeError, match="affine=False"):
        bn.gamma = None
    plain = gpunet.BatchNorm(3, affine=False)
    plain.gamma = None
    assert plain.gamma is None and list(plain.state_dict()) == ["running_mean", "running_var"]
    w = gpunet.Parameter(numpy.full((4, 4), 0.5, numpy.float32), "weight")
    b.weight = w
    assert b.parameters()[0] is w and list(vars(b)).index("weight") < list(vars(b)).index("bias")


def test_a_pytorch_state_dict_loads_where_keys_and_shapes_match():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tmodel = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    model = Sequential(Dense(4, 8), ReLU(), Dense(8, 3))
    assert model.load_state_dict(tmodel.state_dict()) is model
    x = numpy.random.default_rng(0).standard_normal((5, 4)).astype(numpy.float32)
    numpy.testing.assert_allclose(model(x), tmodel(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert model[0].weight.data.dtype == numpy.float32
    # a torch BatchNorm's names differ: strict loading says which
    with pytest.raises(ValueError, match="missing keys 'gamma', 'beta'.*unexpected keys 'weight', 'bias'"):
        gpunet.BatchNorm(3).load_state_dict(torch.nn.BatchNorm1d(3).state_dict())


def test_a_value_numpy_cannot_read_is_named_with_its_key():
    class Unreadable:
        def __array__(self, *args, **kwargs):
            raise TypeError("can't convert cuda:0 device type tensor to numpy")

    model = _mlp()
    state = model.state_dict()
    state["1.bias"] = Unreadable()
    before = model[0].weight.data.copy()
    with pytest.raises(ValueError, match=r"'1.bias': expected an array, got Unreadable that NumPy cannot "
                                         r"read \(can't convert cuda:0"):
        model.load_state_dict(state)
    assert numpy.array_equal(model[0].weight.data, before)      # nothing loaded
    state["1.bias"] = [0.5, 0.5, 0.5]                            # a list is an array's values
    model.load_state_dict(state)
    assert model[1].bias.data.tolist() == [0.5, 0.5, 0.5] and model[1].bias.data.dtype == numpy.float32


def test_parameter_data_takes_an_array_and_names_anything_else():
    layer = Dense(4, 3)
    w = layer.weight.data
    with pytest.raises(TypeError, match=r"Parameter.data: expected a NumPy or CuPy array for weight, got list"):
        layer.weight.data = w.tolist()
    assert layer.weight.data is w                                 # nothing stored
    with pytest.raises(TypeError, match="got list"):
        gpunet.Parameter([1.0, 2.0], "bias")
    layer.weight.data = w.astype(numpy.float64)                  # reassigning an array: a cast, as documented
    assert layer.weight.dtype == numpy.float64 and "data" in vars(layer.weight)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"got Tensor; a torch.Tensor becomes a NumPy array with x.numpy\(\)"):
        layer.weight.data = torch.zeros(3, 4)


def test_a_deep_copied_model_is_independent():
    import copy
    model = _mlp()
    twin = copy.deepcopy(model)
    twin[0].weight.data[...] = 0
    assert not (model[0].weight.data == 0).all()
    x = numpy.ones((2, 4), numpy.float32)
    assert twin(x).shape == (2, 3)


class _Twice(gpunet.Layer):
    """A custom layer written as a PyTorch module: forward only (no autograd here)."""

    def forward(self, x):
        return 2 * x


def test_a_custom_layer_without_backward_says_what_to_write():
    model = Sequential(Dense(4, 4), _Twice())
    x = numpy.ones((2, 4), numpy.float32)
    loss_fn = gpunet.MSELoss()
    loss_fn(model(x), x)
    with pytest.raises(NotImplementedError, match=r"_Twice defines no backward\(dy\): gpunet has no autograd.*"
                                                  r"Parameter.accumulate"):
        model.backward(loss_fn.backward())
    with pytest.raises(NotImplementedError, match=r"Layer defines no forward\(x\)"):
        gpunet.Layer()(x)


class _NoSuper(gpunet.Layer):
    def __init__(self):                  # super().__init__() forgotten
        self.scale = 2.0

    def forward(self, x):
        return self.scale * x


def test_a_custom_layer_that_skipped_super_init_is_told_so():
    with pytest.raises(AttributeError, match=r"_NoSuper.__init__ did not call super\(\).__init__\(\)"):
        Sequential(Dense(4, 4), _NoSuper())(numpy.ones((2, 4), numpy.float32))


class _Blocks(gpunet.Layer):
    """Layers held in a list attribute, as PyTorch's nn.ModuleList holds them."""

    def __init__(self):
        super().__init__()
        self.blocks = [Dense(4, 4, activation="relu"), gpunet.Dropout(0.5), Dense(4, 3)]

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x

    def backward(self, dy):
        for b in reversed(self.blocks):
            dy = b.backward(dy)
        return dy


def test_layers_in_a_list_attribute_are_children_as_in_a_module_list():
    gpunet.manual_seed(0)
    model = _Blocks()
    assert [k for k, _ in model.named_parameters()] == ["blocks.0.weight", "blocks.0.bias",
                                                        "blocks.2.weight", "blocks.2.bias"]
    assert list(model.state_dict())[-2:] == ["blocks.1.seed", "blocks.1.counter"]
    assert model.count_params() == 4 * 4 + 4 + 4 * 3 + 3
    assert model.eval().blocks[1].training is False and model.train().blocks[1].training is True
    before = model.blocks[2].weight.data.copy()
    _step(model, optim.SGD(model, lr=0.1))                       # the optimizer trains them
    assert not numpy.array_equal(model.blocks[2].weight.data, before)
    model.to(dtype=numpy.float64)
    assert model.blocks[0].weight.dtype == numpy.float64
    twin = _Blocks()
    twin.to(dtype=numpy.float64).load_state_dict(model.state_dict())
    x = numpy.ones((2, 4))
    assert numpy.array_equal(twin.eval()(x), model.eval()(x))


def test_a_hand_set_rate_lasts_until_a_closed_form_schedule_steps_and_base_lr_moves_it():
    opt = optim.SGD(Dense(2, 2), lr=0.1)
    sched = optim.ExponentialLR(opt, gamma=0.5)
    opt.lr = 1.0                     # PyTorch's chained ExponentialLR would step to 0.5
    assert sched.step() == opt.lr == 0.05
    sched.base_lr = 1.0
    assert sched.step() == opt.lr == 0.25
    plateau = optim.ReduceLROnPlateau(optim.SGD(Dense(2, 2), lr=0.1), patience=0)
    plateau.optimizer.lr = 0.7       # read at each step, as PyTorch's
    assert plateau.step(1.0) == 0.7 and plateau.step(2.0) == pytest.approx(0.07)


def test_pytorch_names_for_the_rate_say_where_gpunet_keeps_it():
    opt = optim.SGD(Dense(2, 2), lr=0.1)
    with pytest.raises(AttributeError, match=r"'SGD' object has no attribute 'param_groups'; .*opt.lr"):
        opt.param_groups[0]["lr"] = 0.01
    sched = optim.StepLR(opt, step_size=1)
    with pytest.raises(AttributeError, match=r"'StepLR' object has no attribute 'get_last_lr'; sched.lr"):
        sched.get_last_lr()
    with pytest.raises(AttributeError, match=r"^'SGD' object has no attribute 'nonsense'$"):
        opt.nonsense


def test_a_sequential_is_edited_in_place_as_pytorch_s_is():
    model = _mlp()
    model[-1] = Dense(8, 5)                               # a new classifier head
    assert model(numpy.ones((2, 4), numpy.float32)).shape == (2, 5)
    model.append(gpunet.Softmax()).insert(0, gpunet.Identity()).extend([gpunet.Identity()])
    assert [type(l).__name__ for l in model] == ["Identity", "Dense", "Dense", "Softmax", "Identity"]
    del model[0]
    assert list(model.state_dict())[:2] == ["0.weight", "0.bias"]
    model[1:3] = [Dense(8, 3)]
    assert len(model) == 3 and model[1].out_features == 3
    with pytest.raises(TypeError, match=r"Sequential: model\[0\] must be a Layer, got the class ReLU; create one: ReLU\(\)"):
        model[0] = ReLU
    with pytest.raises(TypeError, match=r"Sequential.append: layer must be a Layer, got str; an activation goes "
                                        r"as a layer, gpunet.ReLU\(\)"):
        model.append("relu")
    with pytest.raises(TypeError, match=r"Sequential.extend: item 1 must be a Layer, got int"):
        model.extend([ReLU(), 3])
    assert len(model) == 3                                # nothing half-added


def test_a_seeded_dropout_leaves_the_initial_weights_of_later_layers_as_without_it():
    """What the Dropout docstring and the guide say: Dropout(seed=None) draws its seed from
    the host generator (later layers' weights move); Dropout(p, seed=s) draws nothing."""
    def second_dense(*middle):
        gpunet.manual_seed(0)
        first = Dense(4, 8)
        return Sequential(first, *(make() for make in middle), Dense(8, 3))[-1].weight.data

    plain = second_dense()
    assert numpy.array_equal(second_dense(lambda: gpunet.Dropout(0.5, seed=1)), plain)
    assert not numpy.array_equal(second_dense(lambda: gpunet.Dropout(0.5)), plain)


@pytest.mark.parametrize("call, hint", [
    (lambda: gpunet.init.constant((2, 2), 0.5), r"pass the value by keyword, init.constant\(shape, value=0.5\)"),
    (lambda: gpunet.init.normal((2, 2), 0.0, 0.02), r"pass std and mean by keyword"),
    (lambda: gpunet.init.uniform((2, 2), -1, 1), r"pass low and high by keyword"),
])
def test_pytorch_s_positional_init_settings_name_the_keyword(call, hint):
    with pytest.raises(TypeError, match=r"expected rng to be None or a numpy.random.Generator, got (float|int); "
                                        r"the second argument is the rng: " + hint):
        call()
    assert gpunet.init.constant((2, 2), value=0.5).tolist() == [[0.5, 0.5], [0.5, 0.5]]


def test_sync_batchnorm_convert_reaches_batch_norms_in_a_list_attribute():
    from gpunet import distributed as D

    class Blocks(gpunet.Layer):
        def __init__(self):
            super().__init__()
            self.blocks = [Dense(4, 3), gpunet.BatchNorm(3)]

    net = Blocks()
    gamma = net.blocks[1].gamma
    D.SyncBatchNorm.convert(net, D.Communicator())
    assert isinstance(net.blocks[1], D.SyncBatchNorm) and net.blocks[1].gamma is gamma
    assert isinstance(net.blocks, list) and list(net.state_dict())[2] == "blocks.1.gamma"


def test_a_model_and_its_optimizer_pickle_and_deep_copy():
    import copy
    import pickle

    model = _mlp()
    opt = optim.Adam(model, lr=0.01)
    _step(model, opt)
    model2, opt2 = pickle.loads(pickle.dumps((model, opt)))      # torch.save((model, opt)) habit
    assert opt2.params[0] is model2.parameters()[0]
    for m, o in ((model, opt), (model2, opt2)):
        _step(m, o)
    a, b = model.state_dict(), model2.state_dict()
    assert all(numpy.array_equal(a[k], b[k]) for k in a)           # the copy trains on bit for bit
    model2.to(dtype=numpy.float64)                                 # its optimizer follows it
    assert all(v.dtype == numpy.float64 for st in opt2.state for v in st.values())
    alone = pickle.loads(pickle.dumps(model))
    assert alone.parameters()[0]._optimizers == []
    twin = copy.deepcopy(model)                                    # a copy alone belongs to no optimizer
    twin.to(dtype=numpy.float64)
    assert all(v.dtype == numpy.float32 for st in opt.state for v in st.values())


def test_printing_a_custom_layer_shows_the_layers_it_holds():
    class Head(gpunet.Layer):
        def __init__(self):
            super().__init__()
            self.body = Sequential(Dense(4, 4, activation="relu"))
            self.out = [Dense(4, 2)]

    assert repr(Head()) == ("Head(\n  (body): Sequential(\n    (0): Dense(4, 4, activation='relu')\n  )\n"
                            "  (out.0): Dense(4, 2)\n)")
    assert repr(Dense(4, 2, activation="relu")) == "Dense(4, 2, activation='relu')"
    assert repr(ReLU()) == "ReLU()"


@pytest.mark.parametrize("make, hint", [
    (lambda ps: optim.Adam(ps, learning_rate=1e-3), r"Adam\(\) got an unexpected keyword argument 'learning_rate'; "
                                                    r"gpunet takes lr= \(Keras' learning_rate= is not one of its names\)"),
    (lambda ps: optim.AdamW(ps, beta_1=0.8), r"AdamW\(\) .* 'beta_1'; gpunet takes betas=\(beta_1, beta_2\)"),
    (lambda ps: optim.RMSProp(ps, rho=0.9), r"RMSProp\(\) .* 'rho'; gpunet takes alpha="),
    (lambda ps: optim.SGD(ps, lr=0.1, clipnorm=1.0), r"SGD\(\) .* 'clipnorm'; gpunet.optim.clip_grad_norm"),
    (lambda ps: optim.AdaGrad(ps, epsilon=1e-7), r"AdaGrad\(\) .* 'epsilon'; gpunet takes eps="),
    (lambda ps: optim.SGD(ps, dampening=0.1), r"^SGD\(\) got an unexpected keyword argument 'dampening'$"),
])
def test_keras_optimizer_keywords_name_gpunet_s(make, hint):
    with pytest.raises(TypeError, match=hint):
        make(Dense(2, 2).parameters())


def test_fit_warns_when_the_model_was_edited_after_its_optimizer_was_built():
    import warnings
    X = numpy.random.default_rng(0).standard_normal((16, 4)).astype(numpy.float32)
    y = numpy.arange(16) % 3
    model = _mlp()
    opt = optim.SGD(model, lr=0.1)
    model[-1] = Dense(8, 3)                          # a new head after the optimizer: it would not train
    trainer = gpunet.Trainer(model, SoftmaxCrossEntropy(), opt)
    with pytest.warns(UserWarning, match=r"updates 2 parameter\(s\) that are not the model's, and 2 of the "
                                         r"model's are not in it: was the model edited"):
        trainer.fit((X, y), epochs=1, progress=False)
    frozen = _mlp()                                  # an optimizer over a subset: freezing, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gpunet.Trainer(frozen, SoftmaxCrossEntropy(), optim.SGD(frozen[1:].parameters(), lr=0.1)).fit(
            (X, y), epochs=1, progress=False)


@pytest.mark.parametrize("make, hint", [
    (lambda: SoftmaxCrossEntropy(weight=numpy.ones(3)), r"^SoftmaxCrossEntropy\(\) got an unexpected keyword "
     r"argument 'weight'; gpunet has no class weights .* \(PyTorch's weight= is not one of its names\)$"),
    (lambda: gpunet.BCEWithLogits(pos_weight=numpy.ones(1)), r"^BCEWithLogits\(\) .* 'pos_weight'; gpunet has "
     r"no pos_weight .* \(PyTorch's pos_weight= is not one of its names\)$"),
    (lambda: gpunet.MSELoss(size_average=False), r"^MSELoss\(\) .* 'size_average'; gpunet takes reduction='mean', "
     r"'sum' or 'none', PyTorch's own replacement for reduce and size_average"),
    (lambda: SoftmaxCrossEntropy(reduce=False), r"'reduce'; gpunet takes reduction="),
    (lambda: SoftmaxCrossEntropy(from_logits=True), r"'from_logits'; gpunet's losses take raw logits \(Keras' "
     r"from_logits=True\) .* \(Keras' from_logits= is not one of its names\)$"),
    (lambda: gpunet.BCEWithLogits(from_logits=False), r"^BCEWithLogits\(\) .* 'from_logits'; gpunet's losses"),
    (lambda: SoftmaxCrossEntropy(ignore_class=-1), r"'ignore_class'; gpunet takes ignore_index= \(Keras'"),
    (lambda: SoftmaxCrossEntropy(foo=1), r"^SoftmaxCrossEntropy\(\) got an unexpected keyword argument 'foo'$"),
    (lambda: gpunet.DataLoader(numpy.zeros((4, 2)), num_workers=4), r"^DataLoader\(\) got an unexpected keyword "
     r"argument 'num_workers'; gpunet's DataLoader slices arrays you hold, in the calling thread \(no worker "
     r"processes\) \(PyTorch's num_workers= is not one of its names\)$"),
    (lambda: gpunet.DataLoader(numpy.zeros((4, 2)), pin_memory=True), r"'pin_memory'; gpunet pins on its own"),
    (lambda: gpunet.DataLoader(numpy.zeros((4, 2)), shuffle=True, generator=None), r"'generator'; gpunet takes seed="),
    (lambda: gpunet.DataLoader(numpy.zeros((4, 2)), sampler=None), r"'sampler'; gpunet has no samplers"),
    (lambda: gpunet.DataLoader(numpy.zeros((4, 2)), collate_fn=None), r"'collate_fn'; gpunet's batches are slices"),
])
def test_pytorch_and_keras_loss_and_loader_keywords_name_gpunet_s(make, hint):
    """Found by the leftover audit: PyTorch's CrossEntropyLoss(weight=), BCEWithLogitsLoss(
    pos_weight=), the legacy reduce=/size_average=, Keras' from_logits= and ignore_class=,
    and DataLoader's num_workers=, pin_memory=, generator=, sampler=, collate_fn= got
    Python's bare 'unexpected keyword argument' (as '__init__() got ...')."""
    with pytest.raises(TypeError, match=hint):
        make()


def test_keras_reduction_name_and_a_dataset_tuple_say_what_gpunet_takes():
    """Keras' reduction='sum_over_batch_size' is 'mean'; DataLoader((X, y)), PyTorch's
    DataLoader(TensorDataset(X, y)) habit, failed inside NumPy's conversion, or, for 1-D X
    and y of one length, was stacked into a loader of 2 samples without a word."""
    with pytest.raises(ValueError, match=r"got 'sum_over_batch_size'; Keras' 'sum_over_batch_size' is 'mean'$"):
        gpunet.MSELoss(reduction="sum_over_batch_size")
    x = numpy.arange(8, dtype=numpy.float32)
    for X in ((x.reshape(4, 2), x[:4]), (x, x)):
        with pytest.raises(TypeError, match=r"^DataLoader: got an \(X, y\) tuple as X; X and y go as two "
                                            r"arguments: DataLoader\(X, y, \.\.\.\)"):
            gpunet.DataLoader(X, batch_size=2)
    assert gpunet.DataLoader([[0.0, 1.0], [2.0, 3.0]]).num_samples == 2     # a list of rows is still data


def test_zero_grad_takes_pytorchs_set_to_none():
    """PyTorch's opt.zero_grad(set_to_none=True) (its default, and what gpunet does) was a
    TypeError; set_to_none=False, which would leave zeros to add into, raises saying gpunet
    sets None."""
    model = _mlp()
    opt = optim.SGD(model, lr=0.1)
    _step(model, opt)
    assert all(p.grad is not None for p in model.parameters())
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())
    _step(model, opt)
    model.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())
    for zero in (opt.zero_grad, model.zero_grad):
        with pytest.raises(ValueError, match=r"zero_grad: set_to_none=False is not supported: gpunet's zero_grad "
                                             r"sets every grad to None .* p\.grad = xp\.zeros_like\(p\.data\)"):
            zero(set_to_none=False)
        with pytest.raises(TypeError, match=r"expected set_to_none to be a bool"):
            zero(set_to_none="yes")
