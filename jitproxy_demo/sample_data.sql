-- Sample data for the jitproxy demo and tests.
--
-- hr_prod: employee (300 rows), title (400), salary (600).
-- hr_test: employee (50 rows, obviously fake "Test UserNNN" people).
--
-- Every value is computed from MariaDB's SEQUENCE engine (seq_1_to_N), so each load produces
-- exactly the same rows. Loading again drops and recreates both databases.
--
-- Things tests rely on:
--   * NULLs: employee.manager_id (department heads 1-6), employee.shift_start (every 5th),
--     employee.badge (every 11th), title.to_date and salary.to_date (current rows), salary.note.
--   * Binary: employee.badge VARBINARY(16), raw SHA-256 bytes (zero and high bytes included).
--   * TIME: employee.shift_start. DATETIME(3): employee.created_at, with milliseconds.
--   * Non-ASCII text: some first names (Zoë, José, Łukasz, Søren, 李).
--   * The canary: salary.note = 'CANARY-SALARY-7f3a' on exactly one row (employee 42's current
--     salary). It exists only in hr_prod.salary, so finding it anywhere else is a leak.

SET NAMES utf8mb4;

DROP DATABASE IF EXISTS hr_prod;
CREATE DATABASE hr_prod CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
USE hr_prod;

CREATE TABLE employee (
  id          INT UNSIGNED NOT NULL AUTO_INCREMENT,
  first_name  VARCHAR(50)  NOT NULL,
  last_name   VARCHAR(50)  NOT NULL,
  email       VARCHAR(120) NOT NULL,
  hired_on    DATE         NOT NULL,
  dept        VARCHAR(40)  NOT NULL,
  manager_id  INT UNSIGNED NULL,
  shift_start TIME         NULL,
  badge       VARBINARY(16) NULL,
  created_at  DATETIME(3)  NOT NULL,
  PRIMARY KEY (id),
  UNIQUE KEY uq_employee_email (email),
  KEY ix_employee_dept (dept),
  KEY ix_employee_manager (manager_id)
) ENGINE=InnoDB;

CREATE TABLE title (
  employee_id INT UNSIGNED NOT NULL,
  title       VARCHAR(60)  NOT NULL,
  from_date   DATE         NOT NULL,
  to_date     DATE         NULL,
  PRIMARY KEY (employee_id, from_date)
) ENGINE=InnoDB;

CREATE TABLE salary (
  employee_id INT UNSIGNED  NOT NULL,
  amount      DECIMAL(10,2) NOT NULL,
  from_date   DATE          NOT NULL,
  to_date     DATE          NULL,
  note        VARCHAR(100)  NULL,
  PRIMARY KEY (employee_id, from_date)
) ENGINE=InnoDB;

-- Employees 1-6 head departments 1-6 and have no manager; everyone else reports to the head of
-- their department.
INSERT INTO employee
  (id, first_name, last_name, email, hired_on, dept, manager_id, shift_start, badge, created_at)
SELECT
  id,
  first_name,
  last_name,
  CONCAT(LOWER(last_name), '.', id, '@example.com'),
  DATE'2012-01-02' + INTERVAL (id * 37) % 4000 DAY,
  ELT(1 + (id - 1) % 6, 'engineering', 'sales', 'finance', 'people', 'support', 'legal'),
  IF(id <= 6, NULL, 1 + (id - 1) % 6),
  IF(id % 5 = 0, NULL, MAKETIME(6 + id % 4, (id % 4) * 15, 0)),
  IF(id % 11 = 0, NULL, UNHEX(LEFT(SHA2(CONCAT('badge-', id), 256), 32))),
  TIMESTAMP'2024-01-01 08:00:00' + INTERVAL id * 3600123000 MICROSECOND
FROM (
  SELECT
    seq AS id,
    ELT(1 + (seq * 7) % 20,
        'Ada', 'Grace', 'Alan', 'Zoë', 'José', 'Margaret', 'Edsger', 'Barbara', 'Łukasz', 'Frances',
        'Donald', 'Radia', 'Søren', 'Katherine', 'Ken', 'Hedy', '李', 'Niklaus', 'Annie', 'John')
      AS first_name,
    ELT(1 + (seq * 11) % 20,
        'Lovelace', 'Hopper', 'Turing', 'Kay', 'Ritchie', 'Hamilton', 'Dijkstra', 'Liskov', 'Nowak',
        'Allen', 'Knuth', 'Perlman', 'Larsen', 'Johnson', 'Thompson', 'Lamarr', 'Wei', 'Wirth',
        'Easley', 'Backus')
      AS last_name
  FROM seq_1_to_300
) AS people
ORDER BY id;

-- Every third employee was promoted after 400 days and so has an earlier, closed title; the
-- current title is the row with stage = promoted.
INSERT INTO title (employee_id, title, from_date, to_date)
SELECT
  id,
  CASE
    WHEN id <= 6 AND stage = promoted THEN CONCAT('Head of ', dept)
    WHEN promoted AND stage = 1 THEN CONCAT('Senior ', role)
    ELSE role
  END,
  hired_on + INTERVAL stage * 400 DAY,
  IF(promoted AND stage = 0, hired_on + INTERVAL 400 DAY, NULL)
FROM (
  SELECT
    e.id,
    e.dept,
    e.hired_on,
    e.id % 3 = 0 AS promoted,
    k.seq AS stage,
    ELT(FIELD(e.dept, 'engineering', 'sales', 'finance', 'people', 'support', 'legal'),
        'Engineer', 'Account Executive', 'Analyst', 'HR Partner', 'Support Specialist', 'Counsel')
      AS role
  FROM employee AS e
  JOIN seq_0_to_1 AS k ON k.seq = 0 OR e.id % 3 = 0
) AS stages
ORDER BY id, stage;

-- One to three salary rows per employee (id % 3 + 1 of them), a raise each year; the last is
-- current (to_date NULL). Employee 42's current row carries the canary.
INSERT INTO salary (employee_id, amount, from_date, to_date, note)
SELECT
  e.id,
  40000 + (e.id * 7919) % 60000 + k.seq * 2500 + (e.id % 100) / 100,
  e.hired_on + INTERVAL k.seq * 365 DAY,
  IF(k.seq = e.id % 3, NULL, e.hired_on + INTERVAL (k.seq + 1) * 365 DAY),
  CASE
    WHEN e.id = 42 AND k.seq = e.id % 3 THEN 'CANARY-SALARY-7f3a'
    WHEN k.seq > 0 AND e.id % 7 = 0 THEN 'promotion'
    WHEN k.seq > 0 THEN 'annual review'
    ELSE NULL
  END
FROM hr_prod.employee AS e
JOIN seq_0_to_2 AS k ON k.seq <= e.id % 3
ORDER BY e.id, k.seq;


DROP DATABASE IF EXISTS hr_test;
CREATE DATABASE hr_test CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
USE hr_test;

CREATE TABLE employee LIKE hr_prod.employee;

INSERT INTO employee
  (id, first_name, last_name, email, hired_on, dept, manager_id, shift_start, badge, created_at)
SELECT
  seq,
  'Test',
  CONCAT('User', LPAD(seq, 3, '0')),
  CONCAT('test.user', LPAD(seq, 3, '0'), '@example.invalid'),
  DATE'2020-01-01' + INTERVAL seq DAY,
  ELT(1 + (seq - 1) % 6, 'engineering', 'sales', 'finance', 'people', 'support', 'legal'),
  IF(seq <= 6, NULL, 1 + (seq - 1) % 6),
  IF(seq % 5 = 0, NULL, MAKETIME(9, 0, 0)),
  IF(seq % 11 = 0, NULL, UNHEX(LEFT(SHA2(CONCAT('test-badge-', seq), 256), 32))),
  TIMESTAMP'2025-01-01 00:00:00' + INTERVAL seq * 60000500 MICROSECOND
FROM seq_1_to_50
ORDER BY seq;
