"""The simulated arm's scene as MJCF: a 7-DoF arm with Panda kinematics built from primitives,
on a table, with a front and a wrist camera. A task (robot_drivers/sim/tasks/) adds its objects.

Primitive shapes keep software rendering cheap (>1,000 frames/s at 128x128 here, against ~20
for the mesh Panda), while the link lengths, joint axes and limits follow the Franka Panda, so
poses, workspace and controller gains carry over to the real arm.
"""

from __future__ import annotations

ARM_JOINTS = tuple(f"joint{i}" for i in range(1, 8))
HOME_QPOS = (0.0, 0.0, 0.0, -2.2, 0.0, 2.2, 0.7854)
FINGER_MAX = 0.04  # per finger, so the gripper opens to 8 cm like the Franka hand

_LINK = 'rgba="0.92 0.92 0.95 1"'
_JOINT = 'rgba="0.25 0.25 0.3 1"'
# The front camera's default pose: the table seen from across it, slightly from above.
FRONT_CAMERA = 'pos="1.15 0 0.45" xyaxes="0 1 0 -0.45 0 0.9" fovy="45"'
# The wrist camera's default pose in the hand frame: beside the fingers, looking down past them.
WRIST_CAMERA = 'pos="0.07 0 0.01" xyaxes="0 -1 0 -0.8 0 -0.6" fovy="70"'


def scene_xml(objects: str, *, name: str, front_camera: str = FRONT_CAMERA,
              wrist_camera: str = WRIST_CAMERA,
              render_width: int = 128, render_height: int = 128) -> str:
    """The arm's scene with a task's ``objects`` (MJCF bodies, appended to the worldbody after
    the arm so the arm's ids and state layout never depend on the task) and the cameras
    placed where the task needs them (MJCF attributes of the front and wrist camera)."""
    return f"""
<mujoco model="hilrl_{name}">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="0.002" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual>
    <quality shadowsize="0" offsamples="0"/>
    <global offwidth="{max(render_width, 64)}" offheight="{max(render_height, 64)}"/>
    <headlight ambient="0.4 0.4 0.4" diffuse="0.6 0.6 0.6" specular="0 0 0"/>
  </visual>
  <default>
    <joint damping="2" armature="0.1"/>
    <geom contype="0" conaffinity="0" {_LINK}/>
    <default class="finger">
      <geom type="box" contype="2" conaffinity="1" friction="1.5 0.01 0.001"
            solref="0.005 1" rgba="0.2 0.2 0.2 1"/>
    </default>
  </default>
  <worldbody>
    <light pos="0.4 0 1.5" dir="0 0 -1" directional="true" castshadow="false"/>
    <geom name="floor" type="plane" pos="0 0 -0.4" size="2 2 0.1" rgba="0.3 0.3 0.35 1"/>
    <geom name="table" type="box" pos="0.5 0 -0.2" size="0.45 0.6 0.2" contype="1"
          conaffinity="1" friction="1 0.01 0.001" rgba="0.55 0.45 0.35 1"/>
    <camera name="front" {front_camera}/>
    <body name="link0">
      <geom type="cylinder" size="0.07 0.05" pos="0 0 0.05" {_JOINT}/>
      <geom type="capsule" fromto="0 0 0.05 0 0 0.28" size="0.06"/>
      <body name="link1" pos="0 0 0.333">
        <joint name="joint1" axis="0 0 1" range="-2.8973 2.8973"/>
        <geom type="sphere" size="0.065" {_JOINT}/>
        <body name="link2" quat="1 -1 0 0">
          <joint name="joint2" axis="0 0 1" range="-1.7628 1.7628"/>
          <geom type="capsule" fromto="0 0 0 0 -0.26 0" size="0.055"/>
          <body name="link3" pos="0 -0.316 0" quat="1 1 0 0">
            <joint name="joint3" axis="0 0 1" range="-2.8973 2.8973"/>
            <geom type="capsule" fromto="0 0 0 0.0825 0 0" size="0.055" {_JOINT}/>
            <body name="link4" pos="0.0825 0 0" quat="1 1 0 0">
              <joint name="joint4" axis="0 0 1" range="-3.0718 -0.0698"/>
              <geom type="capsule" fromto="0 0 0 -0.0825 0.1 0" size="0.05"/>
              <geom type="capsule" fromto="-0.0825 0.1 0 -0.0825 0.33 0" size="0.05"/>
              <body name="link5" pos="-0.0825 0.384 0" quat="1 -1 0 0">
                <joint name="joint5" axis="0 0 1" range="-2.8973 2.8973"/>
                <geom type="sphere" size="0.055" {_JOINT}/>
                <body name="link6" quat="1 1 0 0">
                  <joint name="joint6" axis="0 0 1" range="-0.0175 3.7525"/>
                  <geom type="capsule" fromto="0 0 0 0.088 0 0" size="0.05"/>
                  <body name="link7" pos="0.088 0 0" quat="1 1 0 0">
                    <joint name="joint7" axis="0 0 1" range="-2.8973 2.8973"/>
                    <geom type="cylinder" size="0.045 0.04" pos="0 0 0.05" {_JOINT}/>
                    <body name="hand" pos="0 0 0.107" quat="0.9238795 0 0 -0.3826834">
                      <geom type="box" size="0.025 0.09 0.03" pos="0 0 0.03" contype="2"
                            conaffinity="1"/>
                      <site name="ft" pos="0 0 0"/>
                      <camera name="wrist" {wrist_camera}/>
                      <site name="tcp" pos="0 0 0.1034" size="0.005" rgba="1 0 0 0"/>
                      <body name="left_finger" pos="0 0 0.0584">
                        <joint name="finger_left" type="slide" axis="0 1 0" range="0 0.04"
                               damping="5" armature="0.01"/>
                        <geom class="finger" size="0.01 0.006 0.027" pos="0 0.008 0.027"/>
                      </body>
                      <body name="right_finger" pos="0 0 0.0584">
                        <joint name="finger_right" type="slide" axis="0 -1 0" range="0 0.04"
                               damping="5" armature="0.01"/>
                        <geom class="finger" size="0.01 0.006 0.027" pos="0 -0.008 0.027"/>
                      </body>
                    </body>
                  </body>
                </body>
              </body>
            </body>
          </body>
        </body>
      </body>
    </body>
{objects}
  </worldbody>
  <actuator>
    {''.join(f'<motor name="{j}" joint="{j}" ctrlrange="-87 87"/>' for j in ARM_JOINTS[:4])}
    {''.join(f'<motor name="{j}" joint="{j}" ctrlrange="-12 12"/>' for j in ARM_JOINTS[4:])}
    <position name="finger_left" joint="finger_left" kp="300" ctrlrange="0 0.04"
              forcerange="-30 30"/>
    <position name="finger_right" joint="finger_right" kp="300" ctrlrange="0 0.04"
              forcerange="-30 30"/>
  </actuator>
  <sensor>
    <force name="ft_force" site="ft"/>
    <torque name="ft_torque" site="ft"/>
  </sensor>
</mujoco>
"""
