"""ISRGTrainer: nnU-Net's trainer with the ISRG network, simulated prompts and attribute labels.

The prompts of an iteration: the first is a box drawn from the ground truth with the CVPR 2025
challenge's jitter (``first_box_fraction`` of iterations; of those boxes, ``box_2d_fraction`` are 2D,
on one slice, as a reader drags one in a view) or a click inside the lesion; then 0 to
``max_correction_rounds`` corrections without gradient, each a scribble
(``correction_scribble_fraction``), a lasso on one slice (``correction_lasso_fraction``) or a click in
the error regions (the rest); the last prediction is the one trained.

Everything that is not about clicks and attributes stays nnU-Net's: plans, preprocessing, the
data loader and augmentation, logging and the progress plot, checkpoints and ``--c``, DDP, the
5-fold splits, ``--val`` and ``--npz``.
"""
from __future__ import annotations

import os
from contextlib import ExitStack, nullcontext
from os.path import join
from typing import Mapping

import cc3d
import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from torch import autocast, distributed as dist
from torch._dynamo import OptimizedModule

from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_isrg.attributes import (ATTRIBUTE_CLASS_COUNTS_FILENAME, ATTRIBUTE_CLASS_COUNTS_KEY,
                                    ATTRIBUTE_SUPPORT_FILENAME, ATTRIBUTE_SUPPORT_KEY, ATTRIBUTES_FILENAME, IGNORE_INDEX,
                                    attribute_class_counts, attribute_support, lesion_labels_from_dataset_json,
                                    read_attribute_table, schema_from_dataset_json)
from nnunet_isrg.clicks import sample_target_and_first_click, simulate_correction_click
from nnunet_isrg.prompt_sampling import sample_box_prompts, simulate_correction_lasso, simulate_correction_scribble
from nnunet_isrg.prompts import PROMPT_KINDS_KEY
from nnunet_isrg.data.verify import find_attribute_table
from nnunet_isrg.evaluation.fold_validation import validate_fold
from nnunet_isrg.evaluation.protocol import CaseResult
from nnunet_isrg.files import atomic_path, write_json_atomic
from nnunet_isrg.modeling.from_plans import (PLANS_KEY, build_isrg_network, isrg_block_of, make_isrg_block,
                                             preset_crop_size)
from nnunet_isrg.training.data_loader import AttributeLabels, LesionCentredDataLoader
from nnunet_isrg.training.losses import ISRGLoss, UncertaintyWeighting
from nnunet_isrg.training.schedule import WarmupPolyLRScheduler
from nnunet_isrg.training.weight_average import WeightAverage

#: checkpoint key of the raw training weights (for --c); ``network_weights`` holds their average
TRAINING_WEIGHTS_KEY = "isrg_training_weights"


class ISRGTrainer(nnUNetTrainer):
    """Full ISRG (point refinement + feature synergy), ``base`` preset. Variants change class attributes."""

    model_preset: str = "base"
    crop_size: tuple[int, int, int] | None = None     # None: the preset's crop
    point_refinement: bool = True
    feature_synergy: bool = True
    model_overrides: Mapping = {}
    batch_size_override: int | None = 2               # None: the plans' batch size
    max_correction_rounds: int = 3                    # each iteration draws 0..max rounds without gradient
    first_click_interior_fraction: float = 0.3        # first click away from the lesion boundary
    # share of correction clicks placed like the evaluation protocol (centre of the largest error
    # component, as RITM / SAM-Med3D train); the rest are random error voxels (paper eq. 4), so the
    # model also answers a user's less central clicks
    protocol_click_fraction: float = 0.5
    # the prompt mix (see the module docstring): first prompt a box in this share of iterations, else
    # a click; corrections a scribble or a lasso in these shares, else a click
    first_box_fraction: float = 0.5
    box_2d_fraction: float = 0.3
    correction_scribble_fraction: float = 0.2
    correction_lasso_fraction: float = 0.1
    learn_lambda: bool = True
    initial_lambda: float = 1.0
    validation_clicks: int = 5
    # schedule (None: nnU-Net's 1000 epochs x 250 iterations); set by the CPU and debug variants
    epochs: int | None = None
    iterations_per_epoch: int | None = None
    val_iterations_per_epoch: int | None = None
    learning_rate: float = 3e-4
    warmup_epochs: int = 5
    checkpoint_every: int | None = None
    # validation, checkpoints and inference use this moving average of the weights (None: the raw weights)
    weight_average_decay: float | None = 0.999
    EXTRA_LOG_KEYS = ("train_seg_loss", "train_attr_loss", "attr_lambda")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
        self.initial_lr = self.learning_rate
        self.weight_decay = 5e-2
        self.num_epochs = self.epochs or self.num_epochs
        self.num_iterations_per_epoch = self.iterations_per_epoch or self.num_iterations_per_epoch
        self.num_val_iterations_per_epoch = self.val_iterations_per_epoch or self.num_val_iterations_per_epoch
        self.save_every = self.checkpoint_every or self.save_every
        self.oversample_foreground_percent = 0.9      # most crops centred on a lesion, the rest nnU-Net's random crops
        self.schema = schema_from_dataset_json(dataset_json)
        self.lesion_labels = lesion_labels_from_dataset_json(dataset_json)
        self._store_isrg_block_in_plans(configuration)
        self.attribute_table: dict[str, dict[str, str]] = {}
        self.attribute_labels: AttributeLabels | None = None
        self.attribute_support: dict[str, int] | None = None
        self.attribute_class_counts: dict[str, dict[str, int]] | None = None
        self._second_largest_lesion: dict[str, int] = {}
        self.weight_average: WeightAverage | None = None
        self._validation_weights = ExitStack()
        self._prompt_counts: dict[str, int] = {}    # prompts drawn this epoch, by kind (logged)
        self._click_generator = torch.Generator().manual_seed(12345 + (fold if isinstance(fold, int) else 0))
        self._register_log_keys()

    def _register_log_keys(self) -> None:
        """Adds ``EXTRA_LOG_KEYS`` to nnU-Net's logger, which accepts only keys it knows (one value per
        epoch each), through its public checkpoint API; a checkpoint written later holds them too."""
        logged = self.logger.get_checkpoint()
        self.logger.load_checkpoint({**logged, **{k: [] for k in self.EXTRA_LOG_KEYS if k not in logged}})

    # ------------------------------------------------------------------ plans and network
    def _store_isrg_block_in_plans(self, configuration: str) -> None:
        crop = self.crop_size or preset_crop_size(self.model_preset)
        block = make_isrg_block(self.model_preset, crop, self.schema, self.point_refinement, self.feature_synergy,
                                self.model_overrides, self.learn_lambda, self.initial_lambda)
        # The crop is the network's input: nnU-Net's loaders crop patch_size, the saved plans.json
        # carries the block so inference rebuilds this exact network.
        updates = {PLANS_KEY: block, "patch_size": list(block["crop_size"])}
        if self.batch_size_override:
            updates["batch_size"] = int(self.batch_size_override)
        for cfg in (self.plans_manager.plans["configurations"][configuration], self.configuration_manager.configuration):
            cfg.update(updates)

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> torch.nn.Module:
        block = isrg_block_of(configuration_manager.configuration, f"plans '{plans_manager.plans_name}'")
        network = build_isrg_network(block, num_input_channels)
        # a submodule of the network, so that the checkpoint holds it and DDP synchronises it
        network.loss_weighting = UncertaintyWeighting(block.get("initial_lambda", 1.0), block.get("learn_lambda", True))
        return network

    def initialize(self):
        super().initialize()
        if self.weight_average_decay is not None:
            self.weight_average = WeightAverage(self.model, self.weight_average_decay)

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        pass  # the ISRG network has a single output resolution

    def _build_loss(self):
        return ISRGLoss()

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), self.initial_lr, weight_decay=self.weight_decay,
                                      betas=(0.9, 0.98))
        return optimizer, WarmupPolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, self.warmup_epochs)

    def _do_i_compile(self):
        return False  # the click loop changes shapes every iteration; compiling would recompile constantly

    @property
    def model(self):
        """The bare ISRG model (unwrapped from DDP / torch.compile)."""
        mod = self.network.module if self.is_ddp else self.network
        return mod._orig_mod if isinstance(mod, OptimizedModule) else mod

    # ------------------------------------------------------------------ data
    def get_dataloaders(self):
        """nnU-Net 2.8.1's ``nnUNetTrainer.get_dataloaders`` (its transforms, datasets and augmenters,
        built through the trainer's own hooks) with two changes: the loaders are
        :class:`LesionCentredDataLoader` s, and the worker count is :meth:`_augmentation_workers`.
        nnU-Net names both inside that method, so it is written out here rather than extended."""
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        patch_size = self.configuration_manager.patch_size
        deep_supervision_scales = self._get_deep_supervision_scales()
        rotation_for_da, do_dummy_2d_data_aug, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        labels = self.label_manager
        regions = labels.foreground_regions if labels.has_regions else None
        tr_transforms = self.get_training_transforms(
            patch_size, rotation_for_da, deep_supervision_scales, mirror_axes, do_dummy_2d_data_aug,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=self.is_cascaded,
            foreground_labels=labels.foreground_labels, regions=regions, ignore_label=labels.ignore_label)
        val_transforms = self.get_validation_transforms(
            deep_supervision_scales, is_cascaded=self.is_cascaded, foreground_labels=labels.foreground_labels,
            regions=regions, ignore_label=labels.ignore_label)
        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        dl_tr = self._lesion_centred_loader(dataset_tr, initial_patch_size, tr_transforms)
        dl_val = self._lesion_centred_loader(dataset_val, patch_size, val_transforms)
        return self._augmenters(dl_tr, dl_val, self._augmentation_workers())

    def _lesion_centred_loader(self, dataset, initial_patch_size, transforms) -> LesionCentredDataLoader:
        return LesionCentredDataLoader(dataset, self.batch_size, initial_patch_size,
                                       self.configuration_manager.patch_size, self.label_manager,
                                       oversample_foreground_percent=self.oversample_foreground_percent,
                                       sampling_probabilities=None, pad_sides=None, transforms=transforms,
                                       probabilistic_oversampling=self.probabilistic_oversampling)

    def _augmenters(self, dl_tr, dl_val, workers: int):
        """nnU-Net's augmenters around the two loaders (in-process for 0 workers), started as nnU-Net starts them."""
        if workers == 0:
            mt_gen_train, mt_gen_val = SingleThreadedAugmenter(dl_tr, None), SingleThreadedAugmenter(dl_val, None)
        else:
            pin_memory = self.device.type == "cuda"
            mt_gen_train = NonDetMultiThreadedAugmenter(data_loader=dl_tr, transform=None, num_processes=workers,
                                                        num_cached=max(6, workers // 2), seeds=None,
                                                        pin_memory=pin_memory, wait_time=0.002)
            mt_gen_val = NonDetMultiThreadedAugmenter(data_loader=dl_val, transform=None,
                                                      num_processes=max(1, workers // 2),
                                                      num_cached=max(3, workers // 4), seeds=None,
                                                      pin_memory=pin_memory, wait_time=0.002)
        _ = next(mt_gen_train)
        _ = next(mt_gen_val)
        return mt_gen_train, mt_gen_val

    #: CPUs with at most this many cores augment in the training process and give torch every core
    in_process_augmentation_max_cores: int = 4

    def _augmentation_workers(self) -> int:
        """nnU-Net's augmentation worker count, except 0 (in-process) on a small CPU.

        Augmenting a 64^3 batch of two takes ~0.06 s against a ~0.4 s step on two cores, so workers
        would sit idle on cores that torch then cannot use: on 2 cores, 2 workers left torch one
        thread and an iteration took 0.8 s; in-process, 0.46 s.
        """
        if self.device.type == "cpu" and _cpu_cores() <= self.in_process_augmentation_max_cores:
            return 0
        return get_allowed_n_proc_DA()

    def on_train_start(self):
        if self.device.type == "cpu":
            self._limit_cpu_threads()
        self._load_attribute_labels()
        super().on_train_start()
        self._measure_lesion_components()
        self.print_to_log_file(
            f"Prompt mix: first prompt a box (ground truth, CVPR 2025 jitter) in {self.first_box_fraction:.0%} of "
            f"iterations ({self.box_2d_fraction:.0%} of them 2D, on one slice), else a click; corrections (0-{self.max_correction_rounds} rounds) a scribble in "
            f"{self.correction_scribble_fraction:.0%}, a lasso in {self.correction_lasso_fraction:.0%}, else a click")

    def _limit_cpu_threads(self) -> None:
        """Leaves one core per augmentation worker: an oversubscribed OpenMP pool slows a step ~10x."""
        cores, workers = _cpu_cores(), self._augmentation_workers()
        threads = max(1, cores - workers)
        torch.set_num_threads(threads)
        self.print_to_log_file(f"CPU training: {threads} torch thread(s) beside {workers} augmentation worker(s) "
                               f"on {cores} cores" + (" (augmentation in the training process)" if not workers else ""))

    def _load_attribute_labels(self) -> None:
        # copies the raw dataset's table next to the preprocessed data when it is missing or older
        path = find_attribute_table(self.preprocessed_dataset_folder_base)
        if path is not None:
            self.attribute_table = read_attribute_table(path, self.schema)
            self.print_to_log_file(f"attribute labels: {len(self.attribute_table)} cases from {path}")
        else:
            self.attribute_table = {}
            self.print_to_log_file(f"WARNING: no {ATTRIBUTES_FILENAME} in {self.preprocessed_dataset_folder_base} or "
                                   f"the raw dataset: every attribute is unknown and the attribute loss is masked")
        self.attribute_labels = AttributeLabels(self.attribute_table, self.schema)
        tr_keys, _ = self.do_split()
        self.attribute_class_counts = dict(attribute_class_counts(self.attribute_table, self.schema, tr_keys))
        self.attribute_support = dict(attribute_support(self.attribute_class_counts))
        self.print_to_log_file(f"labelled training cases per attribute: {self.attribute_support}; per class: "
                               f"{self.attribute_class_counts}")
        if self.local_rank == 0:
            write_json_atomic(join(self.output_folder, ATTRIBUTE_SUPPORT_FILENAME), self.attribute_support)
            write_json_atomic(join(self.output_folder, ATTRIBUTE_CLASS_COUNTS_FILENAME), self.attribute_class_counts)

    def _measure_lesion_components(self) -> None:
        """Size of each training case's second-largest lesion, to tell when a crop shows the labelled lesion."""
        tr_keys, _ = self.do_split()
        dataset = self.dataset_class(self.preprocessed_dataset_folder, tr_keys)
        for k in tr_keys:
            _, seg, _, _ = dataset.load_case(k)
            lesion = np.isin(np.asarray(seg[0]), self.lesion_labels)
            sizes = np.sort(np.bincount(cc3d.connected_components(lesion, connectivity=26).ravel())[1:])[::-1]
            self._second_largest_lesion[k] = int(sizes[1]) if len(sizes) > 1 else 0

    def _attribute_targets(self, keys, targets: torch.Tensor) -> torch.Tensor:
        """Attribute labels of the batch; masked where the target is not the case's labelled (largest) lesion."""
        labels = self.attribute_labels.for_keys(keys).to(self.device)
        sizes = targets.flatten(1).sum(1).cpu()
        for i, k in enumerate(keys):
            second = self._second_largest_lesion.get(str(k), 0)
            # augmentation scales a lesion by up to 1.4 per axis, so only a component well above the
            # second-largest lesion's size is surely the largest one
            if sizes[i] == 0 or (second > 0 and sizes[i] <= 3 * second):
                labels[i] = IGNORE_INDEX
        return labels

    # ------------------------------------------------------------------ one iteration
    def _lesion_mask(self, target) -> torch.Tensor:
        target = target[0] if isinstance(target, list) else target
        return torch.isin(target, torch.tensor(self.lesion_labels, device=target.device, dtype=target.dtype))

    @property
    def prompt_kinds(self) -> tuple[str, ...]:
        """The kinds of prompt this trainer trains with (recorded in its checkpoints)."""
        shares = {"boxes": self.first_box_fraction, "scribbles": self.correction_scribble_fraction,
                  "lassos": self.correction_lasso_fraction}
        return ("clicks",) + tuple(k for k, share in shares.items() if share > 0)

    def _chance(self, share: float) -> bool:
        return share > 0 and float(torch.rand(1, generator=self._click_generator)) < share

    def _simulate_prompts(self, data: torch.Tensor, lesion: torch.Tensor, n_rounds: int, mix: bool = True):
        """First prompt and ``n_rounds`` correction rounds without gradient (paper section 2.3, with
        the prompt mix of the module docstring; ``mix=False``: clicks only).

        Returns the target component, all point prompts (clicks and box corners), the scribble and
        lasso voxels (B, 2, D, H, W) or None, the previous round's low-res logits (or None) and the
        image embedding (with gradient) for the final round when it can be reused.
        """
        targets, points, labels = sample_target_and_first_click(
            lesion, self._click_generator, interior_fraction=self.first_click_interior_fraction)
        first = "boxes" if mix and self._chance(self.first_box_fraction) else "clicks"
        if first == "boxes":
            points, labels = sample_box_prompts(targets, self._click_generator, two_d_fraction=self.box_2d_fraction)
        if mix:   # training's prompts only (validation's single clicks are not the mix)
            self._prompt_counts[first] = self._prompt_counts.get(first, 0) + 1
        scribbles = None
        prev = None
        reuse_embedding = not self.is_ddp  # DDP synchronises gradients only through forward()
        embedding = self.model.encode_image(data) if reuse_embedding else None
        if n_rounds > 0:
            with torch.no_grad():
                emb = embedding.detach() if embedding is not None else self.model.encode_image(data)
                for _ in range(n_rounds):
                    out = self.model.decode(emb, points, labels, prev, scribbles)
                    pred = out["mask_logits"] > 0
                    draw = float(torch.rand(1, generator=self._click_generator))
                    stroke = None
                    if mix and draw < self.correction_scribble_fraction:
                        kind, stroke = "scribbles", simulate_correction_scribble(pred, targets, self._click_generator)
                    elif mix and draw < self.correction_scribble_fraction + self.correction_lasso_fraction:
                        kind, stroke = "lassos", simulate_correction_lasso(pred, targets, self._click_generator)
                    else:
                        kind, central = "clicks", self._chance(self.protocol_click_fraction)
                        p, l = simulate_correction_click(pred, targets, self._click_generator,
                                                         mode="centre" if central else "proportional")
                        points, labels = torch.cat([points, p], 1), torch.cat([labels, l], 1)
                    if mix:
                        self._prompt_counts[kind] = self._prompt_counts.get(kind, 0) + 1
                    if stroke is not None:
                        scribbles = stroke if scribbles is None else torch.maximum(scribbles, stroke.to(scribbles))
                    prev = out["low_res_logits"]
        return targets, points, labels, scribbles, prev, embedding

    def _predict_final(self, data, points, labels, scribbles, prev, embedding):
        if embedding is not None:
            return self.model.decode(embedding, points, labels, prev, scribbles)
        return self.network(data, points, labels, prev, scribbles)

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        lesion = self._lesion_mask(batch["target"]).to(self.device)
        n_rounds = int(torch.randint(0, self.max_correction_rounds + 1, (1,), generator=self._click_generator))
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            targets, points, labels, scribbles, prev, embedding = self._simulate_prompts(data, lesion, n_rounds)
            attr_targets = self._attribute_targets(batch["keys"], targets)
            out = self._predict_final(data, points, labels, scribbles, prev, embedding)
            loss, parts = self.loss(out, targets, attr_targets, self.model.loss_weighting)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 1.0)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 1.0)
            self.optimizer.step()
        if self.weight_average is not None:
            self.weight_average.update(self.model)
        return {"loss": loss.detach().cpu().numpy(), "seg": parts["seg"], "attr": parts["attr"],
                "lambda": parts["lambda"]}

    def on_train_epoch_end(self, train_outputs):
        super().on_train_epoch_end(train_outputs)
        for key, name in (("seg", "train_seg_loss"), ("attr", "train_attr_loss"), ("lambda", "attr_lambda")):
            value = float(np.mean([o[key] for o in train_outputs]))
            if self.is_ddp:
                gathered = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, value)
                value = float(np.mean(gathered))
            self.logger.log(name, value, self.current_epoch)
        self.print_to_log_file(f"seg loss {self.logger.get_value('train_seg_loss', -1):.4f}, attribute loss "
                               f"{self.logger.get_value('train_attr_loss', -1):.4f}, lambda "
                               f"{self.logger.get_value('attr_lambda', -1):.3f}")
        counts = {k: self._prompt_counts.get(k, 0) for k in ("clicks", "boxes", "scribbles", "lassos")}
        self.print_to_log_file("prompts this epoch: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
        self._prompt_counts = {}

    # ------------------------------------------------------------------ averaged weights
    def _averaged_weights(self):
        """Context in which the network holds the averaged weights (a no-op without averaging)."""
        return self.weight_average.swapped_into(self.model) if self.weight_average is not None else nullcontext()

    def on_validation_epoch_start(self):
        # the pseudo Dice picks checkpoint_best, whose network_weights are the average; a swap left
        # open by an interrupted validation is undone first
        self._validation_weights.close()
        self._validation_weights.enter_context(self._averaged_weights())
        super().on_validation_epoch_start()

    def on_validation_epoch_end(self, val_outputs):
        self._validation_weights.close()
        super().on_validation_epoch_end(val_outputs)

    def save_checkpoint(self, filename: str) -> None:
        """``network_weights`` are the averaged weights, the ones every reader of the checkpoint
        (``isrg predict``, the session, ``--val``) should use; the raw ones ride along for ``--c``,
        and so does each attribute's count of labelled training cases."""
        if self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)  # writes nothing off rank 0 or with checkpointing disabled
        # nnU-Net writes its checkpoint to a temporary file; our keys are added and the result
        # renamed, so `filename` never holds a checkpoint without them
        with atomic_path(filename) as tmp:
            with self._averaged_weights() as training_weights:
                super().save_checkpoint(str(tmp))
            checkpoint = torch.load(tmp, map_location="cpu", weights_only=False)
            if training_weights is not None:
                checkpoint[TRAINING_WEIGHTS_KEY] = training_weights
            checkpoint[ATTRIBUTE_SUPPORT_KEY] = self.attribute_support
            checkpoint[ATTRIBUTE_CLASS_COUNTS_KEY] = self.attribute_class_counts
            checkpoint[PROMPT_KINDS_KEY] = list(self.prompt_kinds)
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        # nnU-Net 2.8.1 reads only a file name here (a dict leaves its `checkpoint` unset), so the
        # file is read twice: once by nnU-Net, once for the keys it does not know
        super().load_checkpoint(filename_or_checkpoint)
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, str):
            checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if checkpoint.get(ATTRIBUTE_SUPPORT_KEY) is not None:
            self.attribute_support = dict(checkpoint[ATTRIBUTE_SUPPORT_KEY])
        if checkpoint.get(ATTRIBUTE_CLASS_COUNTS_KEY) is not None:
            self.attribute_class_counts = dict(checkpoint[ATTRIBUTE_CLASS_COUNTS_KEY])
        if self.weight_average is not None:
            self.weight_average.load_state_dict(self.model.state_dict())
            if TRAINING_WEIGHTS_KEY in checkpoint:
                self.model.load_state_dict(checkpoint[TRAINING_WEIGHTS_KEY])
            else:
                self.print_to_log_file(f"checkpoint without {TRAINING_WEIGHTS_KEY!r} (written without a weight "
                                       "average): training continues from its network_weights")

    def validation_step(self, batch: dict) -> dict:
        """Pseudo Dice after one random click inside the lesion (nnU-Net's green curve)."""
        data = batch["data"].to(self.device, non_blocking=True)
        lesion = self._lesion_mask(batch["target"]).to(self.device)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            targets, points, labels, scribbles, prev, embedding = self._simulate_prompts(data, lesion, 0, mix=False)
            attr_targets = self._attribute_targets(batch["keys"], targets)
            out = self._predict_final(data, points, labels, scribbles, prev, embedding)
            loss, _ = self.loss(out, targets, attr_targets, self.model.loss_weighting)
        pred = out["mask_logits"] > 0
        has_target = targets.flatten(1).any(1)
        pred, tgt = pred[has_target], targets[has_target]
        tp = (pred & tgt).sum().item()
        fp = (pred & ~tgt).sum().item()
        fn = (~pred & tgt).sum().item()
        return {"loss": loss.detach().cpu().numpy(), "tp_hard": np.array([tp]), "fp_hard": np.array([fp]),
                "fn_hard": np.array([fn])}

    # ------------------------------------------------------------------ final validation
    def perform_actual_validation(self, save_probabilities: bool = False):
        """The click protocol on the fold's validation cases (:func:`validate_fold`), with the averaged
        weights; under DDP each process takes its share of the cases and rank 0 writes the summary."""
        if self.attribute_labels is None:
            self._load_attribute_labels()
        self.network.eval()
        _, val_keys = self.do_split()
        if self.is_ddp:
            val_keys = val_keys[self.local_rank::dist.get_world_size()]
        name = self.__class__.__name__
        with self._averaged_weights():
            outcome = validate_fold(
                self.model, self.dataset_class(self.preprocessed_dataset_folder, val_keys),
                join(self.output_folder, "validation"), self.plans_manager, self.configuration_manager,
                self.dataset_json, self.schema, self.lesion_labels, self.validation_clicks,
                gt_segmentations_folder=join(self.preprocessed_dataset_folder_base, "gt_segmentations"),
                attribute_table=self.attribute_table, device=self.device, log=self.print_to_log_file,
                save_probabilities=save_probabilities, gather=self._gather_validation_results,
                run_info={"trainer": name, "fold": self.fold}, plot_title=f"{name} fold {self.fold}",
                attribute_support=self.attribute_support, cvpr25="boxes" in self.prompt_kinds,
                attribute_class_counts=self.attribute_class_counts)
        if outcome is None:
            return
        foreground_dice = outcome.metrics["foreground_mean"]["Dice"]
        self.logger.log_summary("final_val/foreground_dice", foreground_dice)
        dice = outcome.summary["mean_per_click"]["dice"]
        attributes = outcome.summary.get("attributes", {})
        self.print_to_log_file(f"Interactive validation ({len(outcome.results)} cases): mean Dice per click "
                               f"{[round(d, 4) for d in dice]}; mean attribute accuracy "
                               f"{attributes.get('mean_accuracy')}", also_print_to_console=True)
        if "cvpr25" in outcome.summary:
            boxed = outcome.summary["cvpr25"]
            self.print_to_log_file(f"CVPR 2025 protocol (box, then clicks): mean Dice per interaction "
                                   f"{[round(d, 4) for d in boxed['dice_per_interaction']]}; AUC "
                                   f"{boxed['auc_dice']:.4f}; final Dice {boxed['final_dice']:.4f}",
                                   also_print_to_console=True)
        self.print_to_log_file("Mean Validation Dice (final masks, nnU-Net evaluation): ", foreground_dice,
                               also_print_to_console=True)

    def _gather_validation_results(self, results: dict[str, CaseResult]) -> dict[str, CaseResult] | None:
        """All processes' case results on rank 0 (``None`` on the others); the results as they are without DDP."""
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, results)
            results = {k: v for part in gathered for k, v in part.items()}
            dist.barrier()
        return results if self.local_rank == 0 else None


def _cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
