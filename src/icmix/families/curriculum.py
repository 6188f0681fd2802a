"""The curriculum of Garg et al. (2022), shared by the regression families' specs (``mixlinreg``,
``linreg``): every ``curriculum_every`` steps the active dimensions grow by ``dims_step`` from
``dims_start`` (inactive coordinates of x are zero) and the prompt points by ``points_step`` from
``points_start``, up to ``dim`` and ``n_points``; ``curriculum_every = 0`` trains at full size."""

from __future__ import annotations

from icmix._checks import check_positive_int


class Curriculum:
    """Mixin of a frozen spec with the fields ``dim``, ``n_points`` (or a property of that name),
    ``curriculum_every``, ``dims_start``, ``points_start``, ``dims_step`` and ``points_step``."""

    def check_curriculum(self) -> None:
        """``ValueError`` naming the field for a curriculum that cannot run."""
        check_positive_int("task.curriculum_every", self.curriculum_every, minimum=0)
        check_positive_int("task.dims_step", self.dims_step, minimum=0)
        check_positive_int("task.points_step", self.points_step, minimum=0)
        for name, top in (("dims_start", self.dim), ("points_start", self.n_points)):
            value = getattr(self, name)
            if value is not None and not 1 <= check_positive_int(f"task.{name}", value) <= top:
                raise ValueError(f"task.{name} must be between 1 and {top}, got {value}")
            if value is not None and value < top and not self.curriculum_every:
                raise ValueError(f"task.{name} = {value} is below the full size {top}, but task.curriculum_every is 0 "
                                 "(no curriculum: every prompt is full size): set task.curriculum_every, or drop "
                                 f"task.{name}")

    def model_fields(self) -> dict:
        """The model config fields the task sets: ``dim`` and ``max_points`` (``n_points``)."""
        return {"dim": self.dim, "max_points": self.n_points}

    def stage(self, step: int) -> tuple[int, int]:
        """``(active dims, prompt points)`` at training step ``step``."""
        dims, points = self.dims_start or self.dim, self.points_start or self.n_points
        if self.curriculum_every:
            k = step // self.curriculum_every
            dims, points = dims + k * self.dims_step, points + k * self.points_step
        return min(dims, self.dim), min(points, self.n_points)
