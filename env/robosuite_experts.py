"""Scripted experts for robosuite tasks, acting from privileged object poses read from the simulator.

Each expert is a small state machine over named phases (approach above the
object, descend, close the gripper, lift, ...). Its actions are OSC_POSE deltas
(7,): position (3,) and axis-angle rotation (3,) in the robot base frame, in
[-1, 1] (1 = 0.05 m and 0.5 rad per step), then the gripper (-1 open, +1 closed).
Demonstrations are made imperfect on purpose: Gaussian noise of std `noise` on
the six arm dimensions and a random offset of up to `waypoint_noise` metres
(per axis) on the grasp point.

    expert = make_expert("lift", noise=0.05, seed=0)
    obs, _ = env.reset(seed=0); expert.reset(env)
    action = expert(env)
"""

import numpy as np
from scipy.spatial.transform import Rotation

from env.robosuite_env import RobosuiteEnv, robosuite_task

OPEN, CLOSED = -1.0, 1.0
POSITION_GAIN = 15.0  # action per metre of position error: 1 (full speed) from 6.7 cm away
ROTATION_GAIN = 2.0  # action per radian of orientation error
GRASP_STEPS = 8  # steps holding still while the gripper closes or opens
EMPTY_GRIP_GAP = 0.01  # finger gap (m) below which a closed gripper holds nothing
REACHED = 0.01  # position error (m) at which a waypoint counts as reached
MAX_PHASE_STEPS = 60  # a waypoint not reached after this many steps counts as reached, so an expert never stalls
BIN_MARGIN = 0.06  # PickPlaceCan: drop point from the bin quadrant's near corner (m), more than the can's radius
PEG_REACHED = 0.004  # NutAssemblySquare: how close (m) the nut's centre must be over the peg before lowering
HANDLE_DIRECTIONS = (np.pi, np.pi / 2, -np.pi / 2)  # NutAssemblySquare: handle yaws (rad) the arm can reach over the peg
DOWN = Rotation.from_euler("x", np.pi)  # gripper pointing down, fingers closing along the world y axis


def wrap_angle(angle: float, period: float = 2 * np.pi) -> float:
    """`angle` (rad) wrapped to [-period / 2, period / 2)."""
    return (angle + period / 2) % period - period / 2


def toward(current: np.ndarray, target: np.ndarray, gain: float = POSITION_GAIN) -> np.ndarray:
    """Position action (3,) moving `current` toward `target` (both (3,), metres), proportional, clipped to [-1, 1]."""
    return np.clip(gain * (target - current), -1.0, 1.0)


def rotate_toward(current: Rotation, target: Rotation, gain: float = ROTATION_GAIN) -> np.ndarray:
    """Rotation action (3,), the axis-angle from `current` to `target` in the base frame, scaled and clipped."""
    return np.clip(gain * (target * current.inv()).as_rotvec(), -1.0, 1.0)


def gripper_down(yaw: float) -> Rotation:
    """Gripper pointing down, turned by `yaw` (rad) about the world z axis."""
    return Rotation.from_euler("z", yaw) * DOWN


class PickExpert:
    """Grasp an object from above and lift it; subclasses say where the object is and what to do once it is held.

    Phases: above -> descend -> grasp -> lift (-> the subclass's `carry` phases), and back to above whenever the
    closed gripper of a `carrying` phase holds nothing. Each phase returns a position target (3,), a gripper
    rotation target and the gripper command; `__call__` turns them into an action and adds the noise.
    """

    approach_height = 0.08  # above the grasp point (m)
    grasp_height = 0.0  # grasp point above the object's position (m)
    lift_height = 0.15  # how far the grasp point is lifted (m)
    carrying = ("lift",)

    def __init__(self, noise: float = 0.05, waypoint_noise: float = 0.005, seed: int | None = None):
        self.noise = noise
        self.waypoint_noise = waypoint_noise
        self.rng = np.random.default_rng(seed)

    def reset(self, env: RobosuiteEnv) -> None:
        self.go("above")
        self.grasp_offset = self.rng.uniform(-self.waypoint_noise, self.waypoint_noise, size=3)

    def go(self, phase: str) -> None:
        self.phase = phase
        self.phase_steps = 0

    def __call__(self, env: RobosuiteEnv) -> np.ndarray:
        """The next action (7,) float32 in [-1, 1]."""
        target, rotation, gripper = self.act(env)
        self.phase_steps += 1
        obs = env.robomimic_obs()
        arm = np.concatenate([toward(obs["robot0_eef_pos"], target),
                              rotate_toward(Rotation.from_quat(obs["robot0_eef_quat"]), rotation)])
        arm += self.noise * self.rng.standard_normal(6)
        return np.clip(np.append(arm, gripper), -1.0, 1.0).astype(np.float32)

    def object_pos(self, env: RobosuiteEnv) -> np.ndarray:
        raise NotImplementedError

    def grasp_yaw(self, env: RobosuiteEnv) -> float:
        return 0.0

    def grasp_point(self, env: RobosuiteEnv) -> np.ndarray:
        return self.object_pos(env) + np.array([0.0, 0.0, self.grasp_height]) + self.grasp_offset

    @staticmethod
    def eef(env: RobosuiteEnv) -> np.ndarray:
        return env.robomimic_obs()["robot0_eef_pos"]

    @staticmethod
    def holding_nothing(env: RobosuiteEnv) -> bool:
        qpos = env.robomimic_obs()["robot0_gripper_qpos"]
        return qpos[0] - qpos[1] < EMPTY_GRIP_GAP

    def reached(self, env: RobosuiteEnv, target: np.ndarray, tolerance: float = REACHED) -> bool:
        return np.linalg.norm(self.eef(env) - target) < tolerance or self.phase_steps >= MAX_PHASE_STEPS

    def act(self, env: RobosuiteEnv) -> tuple[np.ndarray, Rotation, float]:
        rotation = gripper_down(self.grasp_yaw(env))
        if self.phase == "above":
            target = self.grasp_point(env) + np.array([0.0, 0.0, self.approach_height])
            if self.reached(env, target, 2 * REACHED):
                self.go("descend")
            return target, rotation, OPEN
        if self.phase == "descend":
            target = self.grasp_point(env)
            if self.reached(env, target):
                self.lift_from = target
                self.go("grasp")
            return target, rotation, OPEN
        if self.phase == "grasp":
            if self.phase_steps >= GRASP_STEPS:
                self.go("lift")
            return self.lift_from, rotation, CLOSED
        if self.phase in self.carrying and self.holding_nothing(env):
            self.go("above")
            return self.eef(env), rotation, OPEN
        return self.carry(env, rotation)

    def carry(self, env: RobosuiteEnv, rotation: Rotation) -> tuple[np.ndarray, Rotation, float]:
        """After the grasp: lift straight up."""
        return self.lift_from + np.array([0.0, 0.0, self.lift_height]), rotation, CLOSED


class LiftExpert(PickExpert):
    """Lift: grasp the cube at its centre and lift it."""

    def object_pos(self, env):
        rs = env.robosuite_env
        return rs.sim.data.body_xpos[rs.cube_body_id].copy()


class PickPlaceCanExpert(PickExpert):
    """PickPlaceCan: grasp the can near its top, carry it high over its bin's quadrant, lower it, let go, rise.

    Phases after the grasp: lift -> over_bin -> lower -> release -> retreat.
    """

    grasp_height = 0.02
    carry_height = 0.25  # grasp point above the bins while carrying (m)
    release_height = 0.12  # grasp point above the bin floor when letting go (m)
    carrying = ("lift", "over_bin", "lower")

    def object_pos(self, env):
        rs = env.robosuite_env
        return rs.sim.data.body_xpos[rs.obj_body_id[rs.obj_to_use]].copy()

    def bin_target(self, env: RobosuiteEnv) -> np.ndarray:
        """Where to let go (3,), at the bin floor's height: inside the object's bin quadrant, `BIN_MARGIN` from
        the quadrant's corner nearest the robot (its centre is at the edge of the arm's reach)."""
        rs = env.robosuite_env
        corner = rs.target_bin_placements[rs.object_id] - np.append(rs.bin_size[:2] / 4, 0.0)
        return corner + np.array([BIN_MARGIN, BIN_MARGIN, 0.0])

    def carry(self, env, rotation):
        bin_target = self.bin_target(env)
        high = bin_target[2] + self.carry_height
        if self.phase == "lift":
            target = np.append(self.lift_from[:2], high)
            if self.reached(env, target, 3 * REACHED):
                self.go("over_bin")
            return target, rotation, CLOSED
        if self.phase == "over_bin":
            target = np.append(bin_target[:2], high)
            if self.reached(env, target, 2 * REACHED):
                self.go("lower")
            return target, rotation, CLOSED
        if self.phase == "lower":
            target = np.append(bin_target[:2], bin_target[2] + self.release_height)
            if self.reached(env, target, 2 * REACHED):
                self.go("release")
            return target, rotation, CLOSED
        target = np.append(bin_target[:2], high)
        if self.phase == "release":
            if self.phase_steps >= GRASP_STEPS:
                self.go("retreat")
            return self.eef(env), rotation, OPEN
        return target, rotation, OPEN


class NutAssemblySquareExpert(PickExpert):
    """NutAssemblySquare: grasp the square nut's handle across its width, carry the nut's centre over the square
    peg, lower it around the peg, let go, rise.

    Phases after the grasp: lift -> over_peg -> lower -> release -> retreat.
    """

    grasp_height = 0.0
    carry_height = 0.2  # grasp point above where it was grasped while carrying (m)
    release_height = 0.86  # let go once the nut's centre is this low (m); on the peg means below 0.87
    carrying = ("lift", "over_peg", "lower")

    def nut(self, env: RobosuiteEnv):
        rs = env.robosuite_env
        return rs.nuts[rs.nut_id]

    def object_pos(self, env):
        rs = env.robosuite_env
        return rs.sim.data.site_xpos[rs.sim.model.site_name2id(self.nut(env).important_sites["handle"])].copy()

    def nut_center(self, env: RobosuiteEnv) -> np.ndarray:
        rs = env.robosuite_env
        return rs.sim.data.body_xpos[rs.obj_body_id[self.nut(env).name]].copy()

    def nut_yaw(self, env: RobosuiteEnv) -> float:
        """The direction (rad) the handle points to, from the nut's centre, in the horizontal plane."""
        rs = env.robosuite_env
        quat = rs.sim.data.body_xquat[rs.obj_body_id[self.nut(env).name]]
        handle_axis = Rotation.from_quat(quat, scalar_first=True).apply([1.0, 0.0, 0.0])
        return float(np.arctan2(handle_axis[1], handle_axis[0]))

    def grasp_yaw(self, env):
        """Before the grasp, the nut's yaw wrapped to [-pi/2, pi/2) (the grip is symmetric), so the fingers close
        across the handle; after it, that yaw turned so the handle points to the closest of -x (toward the
        robot), +y, -y: the gripper then stays within the arm's reach over the peg, and the nut's sides line up
        with the peg's."""
        if self.phase in ("above", "descend"):
            self.yaw_at_grasp = self.nut_yaw(env)
            self.held_yaw = wrap_angle(self.yaw_at_grasp, np.pi)
            turns = [wrap_angle(handle - self.yaw_at_grasp) for handle in HANDLE_DIRECTIONS]
            self.turn = min(turns, key=abs)
            return self.held_yaw
        return self.held_yaw + self.turn

    def peg_target(self, env: RobosuiteEnv, nut_height: float) -> np.ndarray:
        """Where the gripper goes (3,) to put the nut's centre over the peg at `nut_height`."""
        rs = env.robosuite_env
        peg = rs.sim.data.body_xpos[rs.peg1_body_id]
        eef = self.eef(env)
        center = self.nut_center(env)
        return np.append(peg[:2] + eef[:2] - center[:2], eef[2] + nut_height - center[2])

    def carry(self, env, rotation):
        high = self.lift_from[2] + self.carry_height
        if self.phase == "lift":
            target = np.append(self.lift_from[:2], high)
            if self.reached(env, target, 3 * REACHED):
                self.go("over_peg")
            return target, rotation, CLOSED
        if self.phase == "over_peg":
            target = self.peg_target(env, self.nut_center(env)[2])
            target[2] = high
            if self.reached(env, target, PEG_REACHED):
                self.go("lower")
            return target, rotation, CLOSED
        if self.phase == "lower":
            if self.nut_center(env)[2] < self.release_height or self.phase_steps >= MAX_PHASE_STEPS:
                self.go("release")
            return self.peg_target(env, self.release_height - 0.03), rotation, CLOSED
        if self.phase == "release":
            if self.phase_steps >= GRASP_STEPS:
                self.go("retreat")
            return self.eef(env), rotation, OPEN
        return self.eef(env) * [1, 1, 0] + [0, 0, high], rotation, OPEN


EXPERTS = {"Lift": LiftExpert, "PickPlaceCan": PickPlaceCanExpert, "NutAssemblySquare": NutAssemblySquareExpert}


def make_expert(env_id: str, noise: float = 0.05, waypoint_noise: float = 0.005, seed: int | None = None) -> PickExpert:
    """The scripted expert of a task (robomimic or short name)."""
    name = robosuite_task(env_id).env_name
    if name not in EXPERTS:
        raise ValueError(f"No scripted expert for {name}: experts exist for {', '.join(EXPERTS)}.")
    return EXPERTS[name](noise=noise, waypoint_noise=waypoint_noise, seed=seed)
