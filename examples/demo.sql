-- The demo's sample data (examples/demo.sh, the dbt example and its test load it).
CREATE DATABASE shop;
USE shop;
CREATE TABLE shop.customers (
  id INT PRIMARY KEY COMMENT 'Customer number',
  name VARCHAR(100) NOT NULL,
  email VARCHAR(200) COMMENT 'Contact address; NULL when withdrawn',
  country CHAR(2) COMMENT 'ISO 3166-1 alpha-2',
  created_at DATETIME(6) NOT NULL
) COMMENT 'People who order';
CREATE TABLE shop.orders (
  id BIGINT PRIMARY KEY AUTO_INCREMENT,
  customer_id INT NOT NULL COMMENT 'shop.customers.id',
  amount DECIMAL(12,2) NOT NULL COMMENT 'Order total',
  status ENUM('new','paid','shipped','cancelled') NOT NULL,
  placed_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  note JSON
) COMMENT 'One row per order';
INSERT INTO shop.customers SELECT seq, CONCAT('Customer ', seq), CONCAT('c', seq, '@example.com'),
  ELT(1 + seq % 4, 'DE', 'FR', 'US', 'JP'), NOW(6) - INTERVAL seq HOUR FROM seq_1_to_1000;
INSERT INTO shop.orders (customer_id, amount, status, note) SELECT 1 + seq % 1000,
  ROUND(5 + (seq * 7919 % 50000) / 100, 2), ELT(1 + seq % 4, 'new','paid','shipped','cancelled'),
  JSON_OBJECT('channel', IF(seq % 3 = 0, 'web', 'app')) FROM seq_1_to_20000;
